//! Who a caller is, and what it may do.
//!
//! - **Identities** come from `auth.identities`: a caller proves one with a bearer token
//!   (`authorization: Bearer <token>`, the same header on gRPC and HTTP; the config
//!   holds only `sha256:<hex>` hashes of tokens) or with a client certificate that the
//!   TLS layer verified (its subject CN or a SAN names the identity).
//! - **Open mode**: with no identities configured, every caller is `anonymous` and may do
//!   everything (the server then listens on loopback only unless told otherwise).
//! - **Permissions** are NATS-style allow and deny lists: of topic patterns for
//!   publishing, subscribing and replaying; of names (with `*` globs) for durables,
//!   dead letters, pools, quotas and queues; and two flags, `monitor` and `admin`.
//! - **Ownership**: with identities, a lease's holder, a quota's component and a queue
//!   worker's name belong to the identity that uses them: its own name, or its name
//!   followed by `.` and anything (`trainer.job-7`). Only the owner (or `admin`) may renew
//!   or release a lease, or answer a request it took.
//! - **Audit**: every refusal and every admin action is a structured line on the
//!   `ganglion::audit` target (identity, action, target) and a count in `/metrics`.
//!
//! The policy is swapped whole on a config reload ([`AuthHandle::set`]), so tokens are
//! rotated by listing the new hash beside the old, then removing the old.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use ganglion_config::AuthConfig;
use ganglion_core::{BusError, Pattern, Topic};

mod edge;
mod names;
mod rules;

pub(crate) use edge::{PeerCertificate, authenticate, grpc_caller};
use ganglion_config::token::{hash_token, parse_token_hash};
use rules::Permissions;
pub use rules::{contains, overlaps};

/// Topics only the server writes: lease events and dead letters.
pub const RESERVED_TOPICS: [&str; 2] = ["coordinator.>", "dlq.>"];

/// How a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No valid credentials (401 / UNAUTHENTICATED).
    Unauthenticated(String),
    /// Known, but not allowed (403 / PERMISSION_DENIED).
    Denied(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unauthenticated(m) | Refusal::Denied(m) => f.write_str(m),
        }
    }
}

impl From<Refusal> for BusError {
    fn from(refusal: Refusal) -> BusError {
        match refusal {
            Refusal::Unauthenticated(m) => BusError::Unauthenticated(m),
            Refusal::Denied(m) => BusError::PermissionDenied(m),
        }
    }
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> tonic::Status {
        ganglion_proto::convert::status_from_error(&BusError::from(refusal))
    }
}

/// An authenticated caller (or the anonymous one).
#[derive(Debug)]
pub struct Identity {
    name: String,
    permissions: Permissions,
    /// Open mode: no identities are configured, names are not owned.
    open: bool,
}

/// The caller of one request, as handlers see it (a request extension).
#[derive(Debug, Clone)]
pub struct Caller(pub(crate) Arc<Identity>);

/// What a caller asks to do, for [`Caller::may`].
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Publish(&'a Topic),
    Subscribe(&'a Pattern),
    /// Create or join a durable subscription or a queue group.
    Join(&'a str),
    Replay(&'a Pattern),
    /// List or redrive a subscription's dead letters.
    DeadLetters(&'a str),
    Lease(&'a str),
    Permit(&'a str),
    Submit(&'a str),
    Work(&'a str),
    Monitor,
    Admin(&'a str),
}

impl Action<'_> {
    /// The audit name and target.
    fn describe(&self) -> (&'static str, String) {
        match self {
            Action::Publish(t) => ("publish", t.as_str().to_owned()),
            Action::Subscribe(p) => ("subscribe", p.as_str().to_owned()),
            Action::Join(n) => ("join", (*n).to_owned()),
            Action::Replay(p) => ("replay", p.as_str().to_owned()),
            Action::DeadLetters(n) => ("dlq", (*n).to_owned()),
            Action::Lease(n) => ("lease", (*n).to_owned()),
            Action::Permit(n) => ("permit", (*n).to_owned()),
            Action::Submit(n) => ("submit", (*n).to_owned()),
            Action::Work(n) => ("work", (*n).to_owned()),
            Action::Monitor => ("monitor", String::new()),
            Action::Admin(what) => ("admin", (*what).to_owned()),
        }
    }
}

impl Caller {
    /// The identity's name (`anonymous` without credentials).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether the caller may do everything an `admin` may.
    pub fn is_admin(&self) -> bool {
        self.0.permissions.admin
    }

    fn allowed(&self, action: Action<'_>) -> bool {
        let p = &self.0.permissions;
        match action {
            Action::Publish(topic) => {
                !is_reserved(topic.as_str()) && p.publish.topic(topic.as_str())
            }
            Action::Subscribe(pattern) => p.subscribe.pattern(pattern),
            Action::Join(name) => p.durables.name(name),
            Action::Replay(pattern) => p.replay.pattern(pattern),
            Action::DeadLetters(name) => p.dlq.name(name),
            Action::Lease(pool) => p.pools.name(pool),
            Action::Permit(quota) => p.quotas.name(quota),
            Action::Submit(queue) => p.submit.name(queue),
            Action::Work(queue) => p.work.name(queue),
            Action::Monitor => p.monitor || p.admin,
            Action::Admin(_) => p.admin,
        }
    }

    /// Allows `action` or refuses it (audited). An allowed admin action is audited too.
    pub fn may(&self, audit: &Audit, action: Action<'_>) -> Result<(), Refusal> {
        if !self.allowed(action) {
            // Described only when refused: `may` runs once per published event.
            let (verb, target) = action.describe();
            audit.refused(self.name(), verb, &target);
            let what = match action {
                Action::Publish(t) if is_reserved(t.as_str()) => {
                    return Err(Refusal::Denied(format!(
                        "topic {t} is written only by the server (coordinator.> and dlq.> are reserved)"
                    )));
                }
                Action::Monitor => {
                    "read the server's views (topics, subscriptions, resources, metrics)".to_owned()
                }
                Action::Admin(what) => format!("{what} (an admin action)"),
                _ => format!("{verb} {target}"),
            };
            return Err(Refusal::Denied(format!(
                "identity {} may not {what}",
                self.name()
            )));
        }
        if let Action::Admin(what) = action {
            audit.admin(self.name(), what);
        }
        Ok(())
    }

    /// Whether `name` (a lease holder, a worker, a component) belongs to this caller:
    /// its own name or `<name>.<anything>`; every name in open mode and for `admin`.
    pub fn owns(&self, name: &str) -> bool {
        self.0.open || self.is_admin() || self.owns_exactly(name)
    }

    /// `name` if the caller owns it, the caller's own name if `name` is empty, or a
    /// refusal naming `field`.
    pub fn claim(&self, audit: &Audit, field: &str, name: &str) -> Result<String, Refusal> {
        if name.is_empty() && !self.0.open {
            return Ok(self.0.name.clone());
        }
        if self.owns(name) {
            return Ok(name.to_owned());
        }
        audit.refused(self.name(), field, name);
        Err(Refusal::Denied(format!(
            "identity {} may not act as {field} {name:?}: use {0:?} or \"{0}.<suffix>\"",
            self.name()
        )))
    }

    /// Allows acting on something `owner` holds (renewing or releasing its lease,
    /// answering the request it took): the owner itself, or an admin (audited).
    pub fn may_act_for(
        &self,
        audit: &Audit,
        verb: &str,
        target: &str,
        owner: &str,
    ) -> Result<(), Refusal> {
        if self.0.open || (!owner.is_empty() && self.owns_exactly(owner)) {
            return Ok(());
        }
        if self.is_admin() {
            audit.admin(self.name(), &format!("{verb} {target} of {owner}"));
            return Ok(());
        }
        audit.refused(self.name(), verb, target);
        Err(Refusal::Denied(format!(
            "identity {} may not {verb} {target}: only its holder or an admin may (or it is gone)",
            self.name()
        )))
    }

    /// Ownership without the admin override.
    fn owns_exactly(&self, name: &str) -> bool {
        name.strip_prefix(self.0.name.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    }
}

/// Whether only the server may write `topic`.
pub fn is_reserved(topic: &str) -> bool {
    topic == "coordinator"
        || topic == "dlq"
        || topic.starts_with("coordinator.")
        || topic.starts_with("dlq.")
}

/// The compiled `auth:` section.
#[derive(Debug)]
pub struct Policy {
    /// SHA-256 of a token → its identity.
    tokens: HashMap<[u8; 32], Arc<Identity>>,
    /// A certificate name → its identity.
    certificates: HashMap<String, Arc<Identity>>,
    /// Who a caller without credentials is, if anyone.
    anonymous: Option<Arc<Identity>>,
    open: bool,
}

impl Policy {
    /// Every caller may do everything (no identities configured).
    pub fn open() -> Policy {
        Policy {
            tokens: HashMap::new(),
            certificates: HashMap::new(),
            anonymous: Some(Arc::new(Identity {
                name: "anonymous".to_owned(),
                permissions: Permissions::everything(),
                open: true,
            })),
            open: true,
        }
    }

    /// Whether no identities are configured.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Compiles `auth`; `allow_anonymous` lets callers without credentials in (with
    /// `auth.anonymous`) when identities exist. Errors name the key path.
    pub fn compile(auth: &AuthConfig, allow_anonymous: bool) -> Result<Policy, (String, String)> {
        if auth.identities.is_empty() {
            return Ok(Policy::open());
        }
        let mut policy = Policy {
            tokens: HashMap::new(),
            certificates: HashMap::new(),
            anonymous: None,
            open: false,
        };
        for (name, config) in &auth.identities {
            let path = format!("auth.identities.{name}");
            if !ganglion_core::is_valid_name(name) || name == "anonymous" {
                return Err((
                    path,
                    "an identity's name is 1 to 64 letters, digits, '-' or '_', and not \"anonymous\"".to_owned(),
                ));
            }
            let identity = Arc::new(Identity {
                name: name.clone(),
                permissions: Permissions::compile(
                    &config.permissions,
                    &format!("{path}.permissions"),
                )?,
                open: false,
            });
            for (i, hash) in config.tokens.iter().enumerate() {
                let key = parse_token_hash(hash)
                    .map_err(|message| (format!("{path}.tokens.{i}"), message))?;
                if let Some(other) = policy.tokens.insert(key, identity.clone()) {
                    return Err((
                        format!("{path}.tokens.{i}"),
                        format!("is also a token of identity {}", other.name),
                    ));
                }
            }
            let names = if config.certificates.is_empty() {
                std::slice::from_ref(name)
            } else {
                &config.certificates[..]
            };
            for (i, cert) in names.iter().enumerate() {
                if let Some(other) = policy.certificates.insert(cert.clone(), identity.clone())
                    && other.name != *name
                {
                    return Err((
                        format!("{path}.certificates.{i}"),
                        format!("{cert:?} already names identity {}", other.name),
                    ));
                }
            }
        }
        if allow_anonymous {
            policy.anonymous = Some(Arc::new(Identity {
                name: "anonymous".to_owned(),
                permissions: Permissions::compile(&auth.anonymous, "auth.anonymous")?,
                open: false,
            }));
        }
        Ok(policy)
    }

    /// Who presents `token` (the bearer token, if any) over a connection whose client
    /// certificate names `certificate` (if any).
    pub fn authenticate(
        &self,
        token: Option<&str>,
        certificate: Option<&[String]>,
    ) -> Result<Caller, Refusal> {
        let by_certificate = match certificate {
            Some(names) if !self.open => Some(
                names
                    .iter()
                    .find_map(|n| self.certificates.get(n))
                    .ok_or_else(|| {
                        Refusal::Unauthenticated(
                            "the client certificate names no identity".to_owned(),
                        )
                    })?,
            ),
            _ => None,
        };
        if let Some(token) = token {
            if self.open {
                return Ok(Caller(self.anonymous.clone().expect("open has anonymous")));
            }
            let identity = self.tokens.get(&hash_token(token)).ok_or_else(|| {
                Refusal::Unauthenticated("the bearer token is not valid".to_owned())
            })?;
            if let Some(by_certificate) = by_certificate
                && !Arc::ptr_eq(by_certificate, identity)
            {
                return Err(Refusal::Unauthenticated(
                    "the bearer token and the client certificate name different identities"
                        .to_owned(),
                ));
            }
            return Ok(Caller(identity.clone()));
        }
        if let Some(identity) = by_certificate {
            return Ok(Caller(identity.clone()));
        }
        self.anonymous.clone().map(Caller).ok_or_else(|| {
            Refusal::Unauthenticated(
                "credentials required: a bearer token (authorization: Bearer <token>) or a client certificate"
                    .to_owned(),
            )
        })
    }
}

/// The policy in force, swapped on reload.
#[derive(Debug)]
pub struct AuthHandle(ArcSwap<Policy>);

impl AuthHandle {
    pub fn new(policy: Policy) -> Arc<AuthHandle> {
        Arc::new(AuthHandle(ArcSwap::from_pointee(policy)))
    }

    pub fn get(&self) -> Arc<Policy> {
        self.0.load_full()
    }

    /// Replaces the policy: requests from now on are judged by `policy`.
    pub fn set(&self, policy: Policy) {
        self.0.store(Arc::new(policy));
    }
}

impl Default for AuthHandle {
    fn default() -> Self {
        AuthHandle(ArcSwap::from_pointee(Policy::open()))
    }
}

/// Counts of audited events, by kind.
#[derive(Debug, Default)]
pub struct Audit {
    pub(crate) refused: AtomicU64,
    pub(crate) unauthenticated: AtomicU64,
    pub(crate) admin: AtomicU64,
}

impl Audit {
    pub(crate) fn refused(&self, identity: &str, action: &str, target: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "ganglion::audit", identity, action, target, outcome = "denied", "refused");
    }

    pub(crate) fn unauthenticated(&self, peer: &str, reason: &str) {
        self.unauthenticated.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "ganglion::audit", peer, reason, outcome = "unauthenticated", "refused");
    }

    pub(crate) fn admin(&self, identity: &str, action: &str) {
        self.admin.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "ganglion::audit", identity, action, outcome = "allowed", "admin action");
    }
}

#[cfg(test)]
mod tests {
    use super::rules::glob;
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn containment_of_patterns() {
        assert!(contains(&p(">"), &p("a.b")));
        assert!(contains(&p("a.>"), &p("a.*.c")));
        assert!(contains(&p("a.*"), &p("a.b")));
        assert!(contains(&p("a.*"), &p("a.*")));
        assert!(!contains(&p("a.*"), &p("a.>")));
        assert!(!contains(&p("a.b"), &p("a.*")));
        assert!(!contains(&p("a.>"), &p("a")));
        assert!(!contains(&p("a.>"), &p(">")));
        assert!(!contains(&p("a.b"), &p("a.b.c")));
    }

    #[test]
    fn overlap_of_patterns() {
        assert!(overlaps(&p("a.>"), &p(">")));
        assert!(overlaps(&p("a.*.c"), &p("*.b.>")));
        assert!(!overlaps(&p("a.b"), &p("a.c")));
        assert!(!overlaps(&p("a.>"), &p("a")));
        assert!(!overlaps(&p("a.*"), &p("a.b.c")));
        assert!(overlaps(&p("secret.>"), &p("*.x")));
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("trainer-*", "trainer-1"));
        assert!(!glob("trainer-*", "advisor-1"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("gpu", "gpu"));
        assert!(!glob("gpu", "gpus"));
    }
}
