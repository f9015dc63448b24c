//! What gzip costs a decision-log batch, level by level: 1,000 events like the gateway's (one
//! deny of the example bundle, 732 bytes, ids and timestamps varying), compressed as the
//! shipper does it (one `GzEncoder` per batch, the batch in one write). Run under callgrind to
//! count instructions, once per level and once with `none` for the batch building alone:
//!
//! ```sh
//! cargo build --release --example decision_log_gzip
//! for l in none 1 2 4 6; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/decision_log_gzip $l 2>&1 | grep -E 'bytes|Collected'; done
//! ```

use std::io::Write;

const EVENT: &str = r#"{"decision_id":"c1fc9a55-0f7c-423a-9ccf-8ca664de4263","labels":{"id":"vm:43647","version":"0.1.0"},"bundles":{"main":{"revision":"0d0d59ec398a"}},"path":"http/orders/decision","input":{"request":{"method":"GET","path":"/orders/1","query":{},"headers":{"host":"127.0.0.1:43647","user-agent":"ureq/2.12.1","accept":"*/*","x-forwarded-for":"127.0.0.1","x-forwarded-proto":"http"},"host":"127.0.0.1","scheme":"http","client_ip":"127.0.0.1"},"route":"orders"},"timestamp":"2026-12-07T20:43:27.970333200Z","metrics":{"timer_rego_query_eval_ns":414061},"route":"orders","status":401,"cached":false,"trace_id":"ae55fbe130e6527efe771888b1860f2b","decision":"deny","result":{"allow":false,"status":401,"reason":"a bearer token is required"}}"#;

fn main() -> std::io::Result<()> {
    let level = std::env::args().nth(1).unwrap_or_else(|| "1".into());
    let mut inside = Vec::new();
    for i in 0..1000u64 {
        let id = format!("{:08x}-0f7c-423a-9ccf-{:012x}", i.wrapping_mul(2_654_435_761) % (1 << 32), i * 40_503);
        let trace = format!("{:032x}", u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let at = format!("20:43:27.{:09}Z", i * 7_919);
        let e = EVENT
            .replace("c1fc9a55-0f7c-423a-9ccf-8ca664de4263", &id)
            .replace("ae55fbe130e6527efe771888b1860f2b", &trace)
            .replace("20:43:27.970333200Z", &at);
        inside.extend_from_slice(e.as_bytes());
        inside.push(b',');
    }
    inside.pop();
    let out = match level.parse::<u32>() {
        Ok(l) => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(l));
            gz.write_all(b"[")?;
            gz.write_all(&inside)?;
            gz.write_all(b"]")?;
            gz.finish()?.len()
        }
        Err(_) => inside.len() + 2,
    };
    eprintln!("level {level}: {} bytes in, {out} bytes out", inside.len() + 2);
    Ok(())
}
