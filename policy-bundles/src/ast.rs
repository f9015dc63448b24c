//! One walk over the modules regorus parsed (`regorus::unstable`, pinned by the lock file),
//! shared by the checks that read a bundle's policies before they run: the functions they call
//! ([`crate::call_check`]) and the parts of the input they read ([`crate::input_reads`]).

use regorus::unstable::{Expr, Literal, Query, Ref, Rule, RuleHead, WithModifier};

/// What a walk reports. Every method has a default, so a check overrides only what it needs.
pub(crate) trait Visitor {
    /// Called for every expression before its children; returning `false` skips the children
    /// (the visitor has walked what it needs of them itself).
    fn enter(&mut self, _e: &Ref<Expr>) -> bool {
        true
    }
    /// Called for every `with` modifier, before its target and its value are walked.
    fn with_modifier(&mut self, _w: &WithModifier) {}
    /// Called for an expression kind this walk does not know (a newer regorus, a feature
    /// enabled later): a check that must be sound treats it as unknowable.
    fn unknown(&mut self, _what: &str) {}
}

pub(crate) fn rule(v: &mut impl Visitor, rule: &Ref<Rule>) {
    match rule.as_ref() {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    expr(v, refr);
                    if let Some(a) = assign {
                        expr(v, &a.value);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    expr(v, refr);
                    if let Some(k) = key {
                        expr(v, k);
                    }
                }
                RuleHead::Func { args, assign, .. } => {
                    args.iter().for_each(|a| expr(v, a));
                    if let Some(a) = assign {
                        expr(v, &a.value);
                    }
                }
            }
            for body in bodies {
                if let Some(a) = &body.assign {
                    expr(v, &a.value);
                }
                query(v, &body.query);
            }
        }
        Rule::Default { args, value, .. } => {
            args.iter().for_each(|a| expr(v, a));
            expr(v, value);
        }
    }
}

pub(crate) fn query(v: &mut impl Visitor, q: &Ref<Query>) {
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn { key, value, collection, .. } => {
                if let Some(k) = key {
                    expr(v, k);
                }
                expr(v, value);
                expr(v, collection);
            }
            Literal::Expr { expr: e, .. } | Literal::NotExpr { expr: e, .. } => expr(v, e),
            Literal::Every { domain, query: q, .. } => {
                expr(v, domain);
                query(v, q);
            }
        }
        for w in &stmt.with_mods {
            v.with_modifier(w);
            expr(v, &w.refr);
            expr(v, &w.r#as);
        }
    }
}

pub(crate) fn expr(v: &mut impl Visitor, e: &Ref<Expr>) {
    if !v.enter(e) {
        return;
    }
    match e.as_ref() {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => {}
        Expr::Array { items, .. } | Expr::Set { items, .. } => items.iter().for_each(|i| expr(v, i)),
        Expr::Object { fields, .. } => {
            for (_, k, val) in fields {
                expr(v, k);
                expr(v, val);
            }
        }
        Expr::ArrayCompr { term, query: q, .. } | Expr::SetCompr { term, query: q, .. } => {
            expr(v, term);
            query(v, q);
        }
        Expr::ObjectCompr { key, value, query: q, .. } => {
            expr(v, key);
            expr(v, value);
            query(v, q);
        }
        Expr::Call { fcn, params, .. } => {
            expr(v, fcn);
            params.iter().for_each(|p| expr(v, p));
        }
        Expr::UnaryExpr { expr: inner, .. } => expr(v, inner),
        Expr::RefDot { refr, .. } => expr(v, refr),
        Expr::RefBrack { refr, index, .. } => {
            expr(v, refr);
            expr(v, index);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            expr(v, lhs);
            expr(v, rhs);
        }
        Expr::Membership { key, value, collection, .. } => {
            if let Some(k) = key {
                expr(v, k);
            }
            expr(v, value);
            expr(v, collection);
        }
        // Variants behind regorus features this crate does not enable.
        #[allow(unreachable_patterns)]
        _ => v.unknown("an expression kind"),
    }
}
