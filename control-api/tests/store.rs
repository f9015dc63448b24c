//! One suite of store behaviours, run against both backends: `sqlite::*` on a temporary file,
//! `postgres::*` on a fresh database per test (`CONTROL_API_TEST_POSTGRES`; required in CI).

mod common;

use std::sync::Arc;
use std::time::Duration;

use control_api::store::{
    ActiveHead, Change, DecisionEvent, EventQuery, GatewayReport, NewRevision, PublishOutcome, RevisionInfo,
    RollbackOutcome, Rollout, ServedHeads, SqlStore, Store, StoreError,
};

fn rev<'a>(bundle: &'a str, revision: &'a str, content: &'a [u8], digest: &'a str) -> NewRevision<'a> {
    NewRevision {
        bundle,
        revision,
        digest,
        content,
        published_by: "ci",
        published_at_ms: 1_795_608_000_000,
        figures: None,
        forced_reason: None,
        staged: false,
    }
}

/// Content and its digest.
fn blob(text: &str) -> (Vec<u8>, String) {
    let bytes = text.as_bytes().to_vec();
    let d = common::digest(&bytes);
    (bytes, d)
}

async fn publishing_stores_a_revision_and_makes_it_active(store: Arc<dyn Store>) {
    assert_eq!(store.active("main").await.unwrap(), None);
    let (c, d) = blob("one");
    let out = store.publish(&rev("main", "v1", &c, &d)).await.unwrap();
    let PublishOutcome::Created(info) = out else { panic!("expected Created, got {out:?}") };
    assert_eq!((info.revision.as_str(), info.digest.as_str(), info.size, info.active), ("v1", d.as_str(), 3, true));
    let head = store.active("main").await.unwrap().unwrap();
    assert_eq!((head.revision.as_str(), head.digest.as_str(), head.size), ("v1", d.as_str(), 3));
    assert_eq!(store.content("main", &d).await.unwrap(), Some(c));
    assert_eq!(store.content("main", "0000").await.unwrap(), None);
    assert_eq!(store.content("other", &d).await.unwrap(), None);
}

async fn publishing_the_active_content_again_is_identical_and_adds_nothing(store: Arc<dyn Store>) {
    let (c, d) = blob("one");
    store.publish(&rev("main", "v1", &c, &d)).await.unwrap();
    let out = store.publish(&rev("main", "v1", &c, &d)).await.unwrap();
    assert!(matches!(out, PublishOutcome::Identical(ref i) if i.revision == "v1" && i.active), "{out:?}");
    assert_eq!(store.revisions("main").await.unwrap().len(), 1);
}

async fn the_same_revision_with_other_content_is_a_conflict_that_changes_nothing(store: Arc<dyn Store>) {
    let (c1, d1) = blob("one");
    let (c2, d2) = blob("two");
    store.publish(&rev("main", "v1", &c1, &d1)).await.unwrap();
    let out = store.publish(&rev("main", "v1", &c2, &d2)).await.unwrap();
    assert_eq!(out, PublishOutcome::Conflict { existing_digest: d1.clone() });
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d1);
    assert_eq!(store.revisions("main").await.unwrap().len(), 1);
    assert_eq!(store.content("main", &d2).await.unwrap(), None);
}

async fn revisions_are_listed_newest_first_with_the_active_one_marked(store: Arc<dyn Store>) {
    for (i, text) in ["a", "b", "c"].iter().enumerate() {
        let (c, d) = blob(text);
        let mut r = rev("main", text, &c, &d);
        r.published_at_ms += i as i64;
        r.published_by = if i == 2 { "release-bot" } else { "ci" };
        store.publish(&r).await.unwrap();
    }
    let list = store.revisions("main").await.unwrap();
    let names: Vec<_> = list.iter().map(|r| (r.revision.as_str(), r.active)).collect();
    assert_eq!(names, [("c", true), ("b", false), ("a", false)]);
    assert_eq!(list[0].published_by, "release-bot");
    assert_eq!(list[0].published_at_ms, 1_795_608_000_002);
    assert_eq!(list[2].size, 1);
    assert!(store.revisions("nothing").await.unwrap().is_empty());
}

async fn rollback_activates_an_earlier_revision_and_refuses_unknown_ones(store: Arc<dyn Store>) {
    let (c1, d1) = blob("one");
    let (c2, d2) = blob("two");
    store.publish(&rev("main", "v1", &c1, &d1)).await.unwrap();
    store.publish(&rev("main", "v2", &c2, &d2)).await.unwrap();
    assert_eq!(store.rollback("main", "v9").await.unwrap(), RollbackOutcome::Unknown);
    assert_eq!(store.rollback("other", "v1").await.unwrap(), RollbackOutcome::Unknown);
    assert_eq!(store.active("main").await.unwrap().unwrap().revision, "v2");

    let out = store.rollback("main", "v1").await.unwrap();
    assert!(matches!(out, RollbackOutcome::Activated(ref i) if i.digest == d1), "{out:?}");
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d1);
    let out = store.rollback("main", "v1").await.unwrap();
    assert!(matches!(out, RollbackOutcome::AlreadyActive(_)), "{out:?}");
    let actives: Vec<_> = store.revisions("main").await.unwrap().into_iter().filter(|r| r.active).collect();
    assert_eq!(actives.len(), 1);
    assert_eq!(actives[0].revision, "v1");
}

async fn republishing_a_rolled_back_revision_reactivates_it(store: Arc<dyn Store>) {
    let (c1, d1) = blob("one");
    let (c2, d2) = blob("two");
    store.publish(&rev("main", "v1", &c1, &d1)).await.unwrap();
    store.publish(&rev("main", "v2", &c2, &d2)).await.unwrap();
    store.rollback("main", "v1").await.unwrap();
    let out = store.publish(&rev("main", "v2", &c2, &d2)).await.unwrap();
    assert!(matches!(out, PublishOutcome::Reactivated(ref i) if i.revision == "v2"), "{out:?}");
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d2);
    assert_eq!(store.revisions("main").await.unwrap().len(), 2);
}

async fn bundles_are_independent(store: Arc<dyn Store>) {
    let (c1, d1) = blob("one");
    let (c2, d2) = blob("two");
    store.publish(&rev("a", "v1", &c1, &d1)).await.unwrap();
    let out = store.publish(&rev("b", "v1", &c2, &d2)).await.unwrap();
    assert!(matches!(out, PublishOutcome::Created(_)), "the same revision name in another bundle: {out:?}");
    assert_eq!(store.active("a").await.unwrap().unwrap().digest, d1);
    assert_eq!(store.active("b").await.unwrap().unwrap().digest, d2);
    assert_eq!(
        store.rollback("b", "v1").await.unwrap(),
        RollbackOutcome::AlreadyActive(store.revisions("b").await.unwrap().remove(0))
    );
}

async fn concurrent_publishes_of_one_bundle_all_land_and_one_is_active(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let (c, d) = blob(&format!("content {i}"));
                store.publish(&rev("main", &format!("v{i}"), &c, &d)).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), PublishOutcome::Created(_)));
    }
    let list = store.revisions("main").await.unwrap();
    assert_eq!(list.len(), 8);
    let head = store.active("main").await.unwrap().unwrap();
    assert_eq!(list[0].revision, head.revision, "the last publish to commit is the active one");
    assert_eq!(list.iter().filter(|r| r.active).count(), 1);
}

async fn reports_are_upserted_per_instance_and_listed_by_instance(store: Arc<dyn Store>) {
    let report = |instance: &str, revision: &str, at: i64| GatewayReport {
        instance: instance.into(),
        bundle: "main".into(),
        revision: Some(revision.into()),
        digest: Some("ab".repeat(32)),
        last_sync: Some("2026-11-25T12:00:00Z".into()),
        staleness_seconds: Some(2.5),
        last_report_ms: at,
        health: Some(format!("{{\"served\":{{\"requests\":{at}}}}}")),
        token: "gateways".into(),
    };
    assert!(store.report(&report("gw-b", "v1", 10)).await.unwrap());
    assert!(store.report(&report("gw-a", "v1", 11)).await.unwrap());
    assert!(store.report(&report("gw-b", "v2", 12)).await.unwrap());
    let partial = GatewayReport {
        revision: None,
        digest: None,
        last_sync: None,
        staleness_seconds: None,
        ..report("gw-c", "", 13)
    };
    store.report(&partial).await.unwrap();
    let fleet = store.fleet().await.unwrap();
    assert_eq!(fleet.len(), 3);
    assert_eq!(fleet[0], report("gw-a", "v1", 11));
    assert_eq!(fleet[1], report("gw-b", "v2", 12));
    assert_eq!(fleet[2], partial);
    // Another token's report for gw-a changes nothing; once gw-a's row expires, it binds anew.
    let forged = GatewayReport { token: "other".into(), staleness_seconds: Some(0.0), ..report("gw-a", "v9", 20) };
    assert!(!store.report(&forged).await.unwrap(), "bound to the token of its first report");
    assert_eq!(store.fleet().await.unwrap()[0], report("gw-a", "v1", 11));
    assert_eq!(store.prune_fleet(12).await.unwrap(), 1, "gw-a (11) is older than 12");
    assert!(store.report(&forged).await.unwrap());
    assert_eq!(store.fleet().await.unwrap()[0].token, "other");
}

async fn a_staged_publish_is_a_canary_until_promoted_or_rolled_back_once(store: Arc<dyn Store>) {
    let (c1, d1) = blob("one");
    let (c2, d2) = blob("two");
    let (c3, d3) = blob("three");
    let staged = |r: NewRevision<'static>| NewRevision { staged: true, ..r };
    // The first publish of a bundle has nothing to canary against: it is active at once.
    store.publish(&staged(rev("main", "v1", leak(c1), leak(d1.clone())))).await.unwrap();
    assert!(store.rollout("main").await.unwrap().is_none());
    store.publish(&staged(rev("main", "v2", leak(c2), leak(d2)))).await.unwrap();
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d1, "the active revision waits for the canary");
    let r = store.rollout("main").await.unwrap().expect("a rollout");
    assert_eq!((r.revision.as_str(), r.previous.as_str(), r.state.as_str()), ("v2", "v1", "canary"));
    assert_eq!(store.canaries().await.unwrap(), vec![r.clone()]);
    // A newer publish supersedes it.
    store.publish(&staged(rev("main", "v3", leak(c3), leak(d3.clone())))).await.unwrap();
    let r3 = store.rollout("main").await.unwrap().expect("a rollout");
    assert_eq!((r3.revision.as_str(), r3.previous.as_str()), ("v3", "v1"));
    assert_eq!(store.canaries().await.unwrap().len(), 1);
    assert!(!store.finish_rollout(r.id, "promoted", None, 5).await.unwrap(), "a superseded rollout cannot be promoted");
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d1);
    // Rolled back once: a second judgement (another replica) changes nothing.
    assert!(store.finish_rollout(r3.id, "rolled_back", Some("canary gw-a silent"), 6).await.unwrap());
    assert!(!store.finish_rollout(r3.id, "promoted", None, 7).await.unwrap());
    let ended = store.rollout("main").await.unwrap().expect("a rollout");
    assert_eq!(
        (ended.state.as_str(), ended.reason.as_deref(), ended.ended_at_ms),
        ("rolled_back", Some("canary gw-a silent"), Some(6))
    );
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d1);
    // Published again and promoted: now everyone's.
    store.publish(&staged(rev("main", "v3", leak(blob("three").0), leak(d3.clone())))).await.unwrap();
    let again = store.rollout("main").await.unwrap().expect("a rollout");
    assert!(store.finish_rollout(again.id, "promoted", None, 8).await.unwrap());
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d3);
}

/// A decision event of `bundle` at `at_ms`, with the columns given.
fn decision(id: &str, bundle: &str, decision: &str, route: Option<&str>, at_ms: i64) -> DecisionEvent {
    DecisionEvent {
        decision_id: id.into(),
        bundle: bundle.into(),
        revision: Some("r1".into()),
        route: route.map(str::to_owned),
        decision: decision.into(),
        timestamp_ms: at_ms,
        event: format!("{{\"decision_id\":\"{id}\",\"at\":{at_ms}}}"),
    }
}

fn all(limit: u32) -> EventQuery {
    EventQuery { limit, ..EventQuery::default() }
}

fn ids_of(events: &[String]) -> Vec<String> {
    events
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap()["decision_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn decision_events_are_stored_once_by_decision_id(store: Arc<dyn Store>) {
    let a = decision("a", "main", "deny", Some("orders"), 1_000);
    let b = decision("b", "main", "allow", Some("orders"), 2_000);
    assert_eq!(store.store_events(&[a.clone(), b.clone()]).await.unwrap(), 2);
    assert_eq!(store.store_events(&[a.clone(), b.clone()]).await.unwrap(), 0, "a retried batch adds nothing");
    let changed = DecisionEvent { event: "{\"decision_id\":\"a\",\"again\":true}".into(), ..a.clone() };
    let c = decision("c", "main", "error", None, 3_000);
    assert_eq!(store.store_events(&[changed, c]).await.unwrap(), 1);
    let listed = store.events(&all(10)).await.unwrap();
    assert_eq!(ids_of(&listed), ["c", "b", "a"]);
    assert_eq!(listed[2], a.event, "the first copy of an event is the one kept");
    assert_eq!(store.store_events(&[]).await.unwrap(), 0);
    let twice = decision("t", "main", "deny", None, 4_000);
    assert_eq!(store.store_events(&[twice.clone(), twice]).await.unwrap(), 1, "twice in one statement: once");
}

async fn a_batch_larger_than_one_insert_statement_is_stored_whole(store: Arc<dyn Store>) {
    let batch: Vec<DecisionEvent> = (0..300).map(|i| decision(&format!("e{i}"), "main", "deny", None, i)).collect();
    assert_eq!(store.store_events(&batch).await.unwrap(), 300);
    assert_eq!(store.events(&all(1000)).await.unwrap().len(), 300);
}

async fn decision_events_are_queried_by_each_filter_newest_first(store: Arc<dyn Store>) {
    let mut r2 = decision("d", "main", "deny", Some("orders"), 4_000);
    r2.revision = Some("r2".into());
    store
        .store_events(&[
            decision("a", "main", "deny", Some("orders"), 1_000),
            decision("b", "main", "allow", Some("public"), 2_000),
            decision("c", "shop", "deny", Some("orders"), 3_000),
            r2,
            decision("e", "other", "error", None, 5_000),
        ])
        .await
        .unwrap();
    let q = |edit: fn(&mut EventQuery)| {
        let mut q = all(100);
        edit(&mut q);
        let store = store.clone();
        async move { ids_of(&store.events(&q).await.unwrap()) }
    };
    assert_eq!(q(|_| {}).await, ["e", "d", "c", "b", "a"]);
    assert_eq!(q(|q| q.bundles = vec!["main".into()]).await, ["d", "b", "a"]);
    assert_eq!(q(|q| q.bundles = vec!["main".into(), "shop".into()]).await, ["d", "c", "b", "a"]);
    assert_eq!(q(|q| q.route = Some("orders".into())).await, ["d", "c", "a"]);
    assert_eq!(q(|q| q.decision = Some("error".into())).await, ["e"]);
    assert_eq!(q(|q| q.revision = Some("r2".into())).await, ["d"]);
    assert_eq!(q(|q| q.since_ms = Some(3_000)).await, ["e", "d", "c"]);
    assert_eq!(q(|q| q.until_ms = Some(2_000)).await, ["b", "a"]);
    assert_eq!(q(|q| q.limit = 2).await, ["e", "d"]);
    let both = |q: &mut EventQuery| {
        q.bundles = vec!["main".into()];
        q.decision = Some("deny".into());
        q.since_ms = Some(1_500);
    };
    assert_eq!(q(both).await, ["d"]);
    assert_eq!(q(|q| q.decision_id = Some("c".into())).await, ["c"]);
    assert_eq!(q(|q| q.decision_id = Some("nope".into())).await, Vec::<String>::new());
    // The events' texts are 29 characters each (`{"decision_id":"a","at":1000}`).
    assert_eq!(q(|q| q.max_event_bytes = Some(29)).await, ["e", "d", "c", "b", "a"]);
    assert_eq!(q(|q| q.max_event_bytes = Some(28)).await, Vec::<String>::new());
}

async fn pruning_drops_old_events_then_the_oldest_beyond_the_count(store: Arc<dyn Store>) {
    let batch: Vec<DecisionEvent> =
        (1..=6).map(|i| decision(&format!("e{i}"), "main", "deny", None, i * 1_000)).collect();
    store.store_events(&batch).await.unwrap();
    assert_eq!(store.prune_events(2_000, None).await.unwrap(), 1, "before 2000: e1");
    assert_eq!(store.prune_events(0, Some(10)).await.unwrap(), 0);
    assert_eq!(store.prune_events(0, Some(3)).await.unwrap(), 2, "e2 and e3 are the oldest beyond 3");
    assert_eq!(ids_of(&store.events(&all(10)).await.unwrap()), ["e6", "e5", "e4"]);
    // Equal timestamps: the later arrival counts as newer.
    store.store_events(&[decision("x", "main", "deny", None, 6_000)]).await.unwrap();
    assert_eq!(store.prune_events(0, Some(2)).await.unwrap(), 2);
    assert_eq!(ids_of(&store.events(&all(10)).await.unwrap()), ["x", "e6"]);
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// Declares each behaviour above as a test for each backend.
macro_rules! store_suite {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = SqlStore::sqlite(&dir.path().join("db/control.db")).await.unwrap();
                    super::$behaviour(Arc::new(store)).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let Some(db) = common::TestDb::create() else { return };
                    let store = SqlStore::postgres(&db.url).await.unwrap();
                    super::$behaviour(Arc::new(store)).await;
                }
            )*
        }
    };
}

store_suite!(
    publishing_stores_a_revision_and_makes_it_active,
    publishing_the_active_content_again_is_identical_and_adds_nothing,
    the_same_revision_with_other_content_is_a_conflict_that_changes_nothing,
    revisions_are_listed_newest_first_with_the_active_one_marked,
    rollback_activates_an_earlier_revision_and_refuses_unknown_ones,
    republishing_a_rolled_back_revision_reactivates_it,
    bundles_are_independent,
    concurrent_publishes_of_one_bundle_all_land_and_one_is_active,
    reports_are_upserted_per_instance_and_listed_by_instance,
    a_staged_publish_is_a_canary_until_promoted_or_rolled_back_once,
    decision_events_are_stored_once_by_decision_id,
    a_batch_larger_than_one_insert_statement_is_stored_whole,
    decision_events_are_queried_by_each_filter_newest_first,
    pruning_drops_old_events_then_the_oldest_beyond_the_count,
);

#[tokio::test]
async fn sqlite_reopening_the_file_keeps_everything_and_announces_no_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    let (c, d) = blob("one");
    {
        let store = SqlStore::sqlite(&path).await.unwrap();
        store.publish(&rev("main", "v1", &c, &d)).await.unwrap();
        assert!(store.changes().await.unwrap().is_none());
    }
    let store = SqlStore::sqlite(&path).await.unwrap();
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d);
    assert_eq!(store.content("main", &d).await.unwrap(), Some(c));
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a notification in time").expect("feed open")
}

#[tokio::test]
async fn postgres_publishes_and_rollbacks_through_one_store_are_announced_to_another() {
    let Some(db) = common::TestDb::create() else { return };
    let a = SqlStore::postgres(&db.url).await.unwrap();
    let b = SqlStore::postgres(&db.url).await.unwrap();
    let mut changes = b.changes().await.unwrap().expect("PostgreSQL announces changes");
    let (c1, d1) = blob("one");
    let (c2, d2) = blob("two");
    a.publish(&rev("main", "v1", &c1, &d1)).await.unwrap();
    assert_eq!(next(&mut changes).await, Change::Bundle("main".into()));
    a.publish(&rev("main", "v2", &c2, &d2)).await.unwrap();
    assert_eq!(next(&mut changes).await, Change::Bundle("main".into()));
    a.rollback("main", "v1").await.unwrap();
    assert_eq!(next(&mut changes).await, Change::Bundle("main".into()));
    // Nothing is announced for writes that change nothing.
    a.publish(&rev("main", "v1", &c1, &d1)).await.unwrap();
    a.publish(&rev("other", "v1", &c1, &d1)).await.unwrap();
    assert_eq!(next(&mut changes).await, Change::Bundle("other".into()));
    assert_eq!(b.active("main").await.unwrap().unwrap().digest, d1);
}

/// A rollback and a promote of the same bundle on two replicas are serialized: judging a
/// rollout waits for the bundle's lock that every other writer of the bundle takes.
#[tokio::test]
async fn postgres_finishing_a_rollout_waits_for_the_writer_holding_the_bundle() {
    use sqlx::{Connection, Executor};
    let Some(db) = common::TestDb::create() else { return };
    let store = Arc::new(SqlStore::postgres(&db.url).await.unwrap());
    let (c1, d1) = blob("one");
    let (c2, d2) = blob("two");
    store.publish(&rev("main", "v1", &c1, &d1)).await.unwrap();
    store.publish(&NewRevision { staged: true, ..rev("main", "v2", &c2, &d2) }).await.unwrap();
    let canary = store.rollout("main").await.unwrap().expect("a canary");

    // Another writer of the bundle, mid-transaction.
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('control_api_bundle'), hashtext('main'))").await.unwrap();
    let promote = tokio::spawn({
        let store = store.clone();
        async move { store.finish_rollout(canary.id, "promoted", None, 9).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!promote.is_finished(), "the promote went ahead while another writer held the bundle");
    // That writer (a rollback) ends the canary before it lets go: the promote then finds it over.
    tx.execute(sqlx::query("UPDATE rollouts SET state = 'superseded' WHERE id = $1").bind(canary.id)).await.unwrap();
    tx.commit().await.unwrap();
    assert!(!promote.await.unwrap(), "a rollout ended meanwhile cannot be promoted");
    assert_eq!(store.active("main").await.unwrap().unwrap().digest, d1);
}

/// A store that, right after the first read of what a bundle serves (whichever statement reads
/// it first), promotes a rollout through another connection: the interleaving a promotion on
/// another replica produces when it commits in the middle of a hub reload.
struct PromoteAfterFirstRead {
    inner: Arc<SqlStore>,
    rollout: i64,
    armed: std::sync::atomic::AtomicBool,
}

impl PromoteAfterFirstRead {
    async fn promote_once(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            assert!(self.inner.finish_rollout(self.rollout, "promoted", None, 9).await.unwrap());
        }
    }
}

#[async_trait::async_trait]
impl Store for PromoteAfterFirstRead {
    async fn publish(&self, new: &NewRevision<'_>) -> Result<PublishOutcome, StoreError> {
        self.inner.publish(new).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn active(&self, bundle: &str) -> Result<Option<ActiveHead>, StoreError> {
        let read = self.inner.active(bundle).await;
        self.promote_once().await;
        read
    }
    async fn heads(&self, bundle: &str) -> Result<Option<ServedHeads>, StoreError> {
        let read = self.inner.heads(bundle).await;
        self.promote_once().await;
        read
    }
    async fn content(&self, bundle: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.content(bundle, digest).await
    }
    async fn revisions(&self, bundle: &str) -> Result<Vec<RevisionInfo>, StoreError> {
        self.inner.revisions(bundle).await
    }
    async fn rollback(&self, bundle: &str, revision: &str) -> Result<RollbackOutcome, StoreError> {
        self.inner.rollback(bundle, revision).await
    }
    async fn rollout(&self, bundle: &str) -> Result<Option<Rollout>, StoreError> {
        self.inner.rollout(bundle).await
    }
    async fn rollouts(&self, bundle: &str, limit: u32) -> Result<Vec<Rollout>, StoreError> {
        self.inner.rollouts(bundle, limit).await
    }
    async fn canaries(&self) -> Result<Vec<Rollout>, StoreError> {
        self.inner.canaries().await
    }
    async fn finish_rollout(&self, id: i64, state: &str, why: Option<&str>, now_ms: i64) -> Result<bool, StoreError> {
        self.inner.finish_rollout(id, state, why, now_ms).await
    }
    async fn report(&self, report: &GatewayReport) -> Result<bool, StoreError> {
        self.inner.report(report).await
    }
    async fn prune_fleet(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_fleet(before_ms).await
    }
    async fn fleet(&self) -> Result<Vec<GatewayReport>, StoreError> {
        self.inner.fleet().await
    }
    async fn store_events(&self, events: &[DecisionEvent]) -> Result<u64, StoreError> {
        self.inner.store_events(events).await
    }
    async fn events(&self, query: &EventQuery) -> Result<Vec<String>, StoreError> {
        self.inner.events(query).await
    }
    async fn prune_events(&self, before_ms: i64, keep: Option<u64>) -> Result<u64, StoreError> {
        self.inner.prune_events(before_ms, keep).await
    }
    async fn changes(&self) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<Change>>, StoreError> {
        self.inner.changes().await
    }
}

/// A promotion that commits (on another replica) while the hub reloads a bundle is seen whole
/// or not at all: the canaries are served the candidate before it and everyone after it, never
/// the old revision again (which two separate reads served them until the next reload).
#[tokio::test]
async fn postgres_a_promotion_committing_mid_reload_never_serves_the_canaries_the_old_revision() {
    let Some(db) = common::TestDb::create() else { return };
    let inner = Arc::new(SqlStore::postgres(&db.url).await.unwrap());
    let (c1, d1) = blob("one");
    let (c2, d2) = blob("two");
    inner.publish(&rev("main", "v1", &c1, &d1)).await.unwrap();
    inner.publish(&NewRevision { staged: true, ..rev("main", "v2", &c2, &d2) }).await.unwrap();
    let canary = inner.rollout("main").await.unwrap().expect("a canary");
    let store = Arc::new(PromoteAfterFirstRead { inner: inner.clone(), rollout: canary.id, armed: true.into() });
    let hub = control_api::long_poll_hub::Hub::new(store.clone());
    let (_, slot) = hub.reload("main", None).await.unwrap();
    assert!(!store.armed.load(std::sync::atomic::Ordering::SeqCst), "the promotion ran mid-reload");
    assert_eq!(inner.active("main").await.unwrap().unwrap().digest, d2, "the promotion committed");
    let heads = slot.expect("main is served");
    assert_eq!(heads.for_cohort(true).revision, "v2", "the canaries were served the old revision again");
    // A reload after the promotion (its announcement) serves the candidate to everyone.
    let (_, slot) = hub.reload("main", None).await.unwrap();
    let heads = slot.expect("main is served");
    assert_eq!((heads.for_cohort(false).revision.as_str(), heads.canary.is_none()), ("v2", true));
}

/// A relative SQLite path through `..` (as `config/../run/control.db` from a config file given
/// relative to the working directory) opens, is created and keeps what was published.
#[tokio::test]
async fn a_relative_sqlite_path_through_dot_dot_opens_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let target = dir.path().join("sub/../data/control.db");
    let relative = std::path::PathBuf::from(format!("{up}{}", target.display().to_string().trim_start_matches('/')));
    assert!(relative.is_relative(), "{}", relative.display());
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    {
        let store = SqlStore::sqlite(&relative).await.expect("opens a relative path");
        let (c, d) = blob("one");
        store.publish(&rev("main", "v1", &c, &d)).await.unwrap();
    }
    assert!(dir.path().join("data/control.db").exists());
    let store = SqlStore::sqlite(&relative).await.expect("reopens");
    assert_eq!(store.active("main").await.unwrap().map(|h| h.revision), Some("v1".to_owned()));
}
