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
use ganglion_config::{AuthConfig, PermissionsConfig, Rule};
use ganglion_core::{BusError, Pattern, PatternToken, Topic};

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

/// Topic patterns allowed and denied.
#[derive(Debug, Clone, Default)]
struct TopicRule {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl TopicRule {
    fn everything() -> TopicRule {
        TopicRule {
            allow: vec![Pattern::new(">").expect("valid")],
            deny: Vec::new(),
        }
    }

    fn compile(rule: &Rule, path: &str) -> Result<TopicRule, (String, String)> {
        let parse = |list: &[String], which: &str| {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    Pattern::new(p).map_err(|e| {
                        (
                            format!("{path}.{which}.{i}"),
                            format!("{p:?} is not a topic pattern: {e}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TopicRule {
            allow: parse(&rule.allow, "allow")?,
            deny: parse(&rule.deny, "deny")?,
        })
    }

    /// Whether `topic` is allowed.
    fn topic(&self, topic: &str) -> bool {
        self.allow.iter().any(|p| p.matches_str(topic))
            && !self.deny.iter().any(|p| p.matches_str(topic))
    }

    /// Whether every topic `pattern` matches is allowed: it lies inside an allowed
    /// pattern and overlaps no denied one.
    fn pattern(&self, pattern: &Pattern) -> bool {
        self.allow.iter().any(|a| contains(a, pattern))
            && !self.deny.iter().any(|d| overlaps(d, pattern))
    }
}

/// Whether `outer` matches every topic `inner` matches.
pub fn contains(outer: &Pattern, inner: &Pattern) -> bool {
    let mut inner = inner.tokens();
    for o in outer.tokens() {
        match (o, inner.next()) {
            (PatternToken::Tail, Some(_)) => return true,
            (_, None) | (_, Some(PatternToken::Tail)) => return false,
            (PatternToken::Any, Some(_)) => {}
            (PatternToken::Literal(a), Some(PatternToken::Literal(b))) if a == b => {}
            (PatternToken::Literal(_), Some(_)) => return false,
        }
    }
    inner.next().is_none()
}

/// Whether some topic matches both `a` and `b`.
pub fn overlaps(a: &Pattern, b: &Pattern) -> bool {
    let (mut a, mut b) = (a.tokens(), b.tokens());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(PatternToken::Tail), Some(_)) | (Some(_), Some(PatternToken::Tail)) => {
                return true;
            }
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(PatternToken::Literal(x)), Some(PatternToken::Literal(y))) if x != y => {
                return false;
            }
            _ => {}
        }
    }
}

/// Names allowed and denied, with `*` matching any run of characters.
#[derive(Debug, Clone, Default)]
struct NameRule {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl NameRule {
    fn everything() -> NameRule {
        NameRule {
            allow: vec!["*".to_owned()],
            deny: Vec::new(),
        }
    }

    fn compile(rule: &Rule) -> NameRule {
        NameRule {
            allow: rule.allow.clone(),
            deny: rule.deny.clone(),
        }
    }

    fn name(&self, name: &str) -> bool {
        self.allow.iter().any(|g| glob(g, name)) && !self.deny.iter().any(|g| glob(g, name))
    }
}

/// `*` matches any run of characters (none included); everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// What one caller may do, compiled from [`PermissionsConfig`].
#[derive(Debug, Clone, Default)]
struct Permissions {
    publish: TopicRule,
    subscribe: TopicRule,
    durables: NameRule,
    replay: TopicRule,
    dlq: NameRule,
    pools: NameRule,
    quotas: NameRule,
    submit: NameRule,
    work: NameRule,
    monitor: bool,
    admin: bool,
}

impl Permissions {
    fn everything() -> Permissions {
        Permissions {
            publish: TopicRule::everything(),
            subscribe: TopicRule::everything(),
            durables: NameRule::everything(),
            replay: TopicRule::everything(),
            dlq: NameRule::everything(),
            pools: NameRule::everything(),
            quotas: NameRule::everything(),
            submit: NameRule::everything(),
            work: NameRule::everything(),
            monitor: true,
            admin: true,
        }
    }

    fn compile(p: &PermissionsConfig, path: &str) -> Result<Permissions, (String, String)> {
        Ok(Permissions {
            publish: TopicRule::compile(&p.publish, &format!("{path}.publish"))?,
            subscribe: TopicRule::compile(&p.subscribe, &format!("{path}.subscribe"))?,
            durables: NameRule::compile(&p.durables),
            replay: TopicRule::compile(&p.replay, &format!("{path}.replay"))?,
            dlq: NameRule::compile(&p.dlq),
            pools: NameRule::compile(&p.resources.pools),
            quotas: NameRule::compile(&p.resources.quotas),
            submit: NameRule::compile(&p.resources.submit),
            work: NameRule::compile(&p.resources.work),
            monitor: p.monitor,
            admin: p.admin,
        })
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

/// Prefix of every minted token.
const TOKEN_PREFIX: &str = "gng_";

/// A new random token: `gng_` and 43 characters of base64url (256 bits).
pub fn mint_token() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn hash_token(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What the config holds for `token`: `sha256:` and 64 hex digits.
pub fn token_hash(token: &str) -> String {
    let hex: String = hash_token(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn parse_token_hash(text: &str) -> Result<[u8; 32], String> {
    let expected = "expected \"sha256:\" and 64 hex digits, as `ganglion auth token NAME` prints";
    let hex = text
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("{:?}: {expected}", ganglion_core::excerpt(text)))?;
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{:?}: {expected}", ganglion_core::excerpt(text)))?;
    }
    Ok(out)
}

/// The bearer token in `headers`, if any.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| Some(t.trim()))
        .ok_or_else(|| {
            Refusal::Unauthenticated(
                "the authorization header must be \"Bearer <token>\"".to_owned(),
            )
        })
}

/// The names in the client certificate a connection's TLS handshake verified (a
/// request extension, set per connection).
#[derive(Debug, Clone)]
pub(crate) struct PeerCertificate(pub(crate) Arc<[String]>);

/// The caller of a public request: no permissions at all.
fn public_caller() -> Caller {
    static NOBODY: std::sync::OnceLock<Arc<Identity>> = std::sync::OnceLock::new();
    Caller(
        NOBODY
            .get_or_init(|| {
                Arc::new(Identity {
                    name: "anonymous".to_owned(),
                    permissions: Permissions::default(),
                    open: false,
                })
            })
            .clone(),
    )
}

/// Requests that need no credentials: health checks and gRPC reflection (the schema is
/// public; the data behind it is not).
fn is_public(path: &str) -> bool {
    path == "/api/v1/health"
        || path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
}

/// Middleware on both routers: authenticates each request and hands its [`Caller`] to
/// the handler, or answers 401 (UNAUTHENTICATED on gRPC) itself.
pub(crate) async fn authenticate(
    axum::extract::State(state): axum::extract::State<Arc<crate::State>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let policy = state.auth.get();
    // Credentials on a public request are not looked at: a probe with a stale token
    // still learns whether the server is up, and nothing else.
    if is_public(request.uri().path()) {
        request.extensions_mut().insert(public_caller());
        return next.run(request).await;
    }
    let certificate = request.extensions().get::<PeerCertificate>().cloned();
    let caller = bearer(request.headers())
        .and_then(|token| policy.authenticate(token, certificate.as_ref().map(|c| &c.0[..])));
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            let peer = request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .map_or_else(String::new, |a| a.to_string());
            state.audit.unauthenticated(&peer, &refusal.to_string());
            let grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if grpc {
                tonic::Status::from(refusal)
                    .into_http::<axum::body::Body>()
                    .map(axum::body::Body::new)
            } else {
                axum::response::IntoResponse::into_response(crate::http::ApiError::from(
                    BusError::from(refusal),
                ))
            }
        }
    }
}

/// The caller of a gRPC request (set by [`authenticate`]).
pub(crate) fn grpc_caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            tonic::Status::unauthenticated("no caller: the request was not authenticated")
        })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn token_hashes_round_trip_and_bad_ones_say_what_is_expected() {
        let token = mint_token();
        assert!(token.starts_with("gng_") && token.len() == 4 + 43);
        assert_ne!(token, mint_token());
        let hash = token_hash(&token);
        assert_eq!(parse_token_hash(&hash).unwrap(), hash_token(&token));
        let error = parse_token_hash("md5:abc").unwrap_err();
        assert!(error.contains("sha256:"), "{error}");
        // 64 bytes, but not 64 hex digits (found by the config_loader fuzzer: a
        // multi-byte character used to panic the hex slicing).
        let wide = format!("sha256:{}ƞ{}", "a".repeat(31), "b".repeat(31));
        assert!(parse_token_hash(&wide).is_err());
    }
}
