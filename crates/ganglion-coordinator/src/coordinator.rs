//! Everything the coordinator serves, built from one configuration.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ganglion_core::Clock;

use crate::CoordinatorError;
use crate::breaker::{Breaker, BreakerSpec};
use crate::lease::{FileLeaseStore, LeaseStore, PoolSpec, Pools, PoolsOptions};
use crate::queue::{FileQueueStore, QueueStore, RequestQueue};
use crate::quota::{FileQuotaStore, Quota, QuotaSpec, QuotaStore};

/// Where the coordinator keeps its state between runs: the lease table, and one store
/// per quota and per request queue. [`FileStores`] keeps them in a directory.
pub trait Stores {
    fn leases(&self) -> Result<Box<dyn LeaseStore>, CoordinatorError>;
    fn quota(&self, name: &str) -> Result<Box<dyn QuotaStore>, CoordinatorError>;
    fn queue(&self, name: &str) -> Result<Box<dyn QueueStore>, CoordinatorError>;
}

/// The coordinator's state in one directory: `leases.state`, `<quota>.quota`,
/// `<queue>.queue`.
#[derive(Debug, Clone)]
pub struct FileStores {
    dir: std::path::PathBuf,
}

impl FileStores {
    /// Stores in `dir`, created if missing.
    pub fn new(dir: &Path) -> Result<FileStores, CoordinatorError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            CoordinatorError::Unavailable(format!("creating {}: {e}", dir.display()))
        })?;
        Ok(FileStores {
            dir: dir.to_owned(),
        })
    }
}

impl Stores for FileStores {
    fn leases(&self) -> Result<Box<dyn LeaseStore>, CoordinatorError> {
        Ok(Box::new(FileLeaseStore::new(&self.dir)))
    }

    fn quota(&self, name: &str) -> Result<Box<dyn QuotaStore>, CoordinatorError> {
        Ok(Box::new(FileQuotaStore::new(&self.dir, name)))
    }

    fn queue(&self, name: &str) -> Result<Box<dyn QueueStore>, CoordinatorError> {
        Ok(Box::new(FileQueueStore::new(&self.dir, name)))
    }
}

/// A request queue's definition: which quota paces it, how long answers are cached,
/// how long a worker has to complete what it took, how much may wait.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub quota: String,
    pub cache_ttl: Duration,
    pub take_timeout: Duration,
    /// Requests waiting or in progress at most.
    pub max_pending: usize,
    /// Bytes of requests waiting or in progress at most.
    pub max_bytes: usize,
}

impl QueueSpec {
    /// A queue on `quota` with the default cache TTL (1 h), take timeout (5 min) and
    /// bounds.
    pub fn new(name: impl Into<String>, quota: impl Into<String>) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            quota: quota.into(),
            cache_ttl: Duration::from_secs(3600),
            take_timeout: crate::queue::DEFAULT_TAKE_TIMEOUT,
            max_pending: crate::queue::DEFAULT_MAX_PENDING,
            max_bytes: crate::queue::DEFAULT_MAX_BYTES,
        }
    }
}

/// What the coordinator manages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoordinatorConfig {
    pub pools: Vec<PoolSpec>,
    pub leases: PoolsOptions,
    pub quotas: Vec<QuotaSpec>,
    pub queues: Vec<QueueSpec>,
    pub breakers: Vec<BreakerSpec>,
}

/// Pools, quotas, queues and breakers, by name.
#[derive(Debug)]
pub struct Coordinator {
    pools: Arc<Pools>,
    quotas: BTreeMap<String, Arc<Quota>>,
    queues: BTreeMap<String, (String, Arc<RequestQueue>)>,
    breakers: BTreeMap<String, Arc<Breaker>>,
}

/// Puts `kind.name.` before the field an error names.
fn within(kind: &str, name: &str, error: CoordinatorError) -> CoordinatorError {
    match error {
        CoordinatorError::InvalidArgument { field, message } => {
            CoordinatorError::invalid(format!("{kind}.{name}.{field}"), message)
        }
        other => other,
    }
}

fn not_found(kind: &str, name: &str) -> CoordinatorError {
    CoordinatorError::NotFound {
        what: format!("{kind} {}", ganglion_core::excerpt(name)),
    }
}

impl Coordinator {
    /// Builds everything; with `dir`, lease state, quota and queue journals live there.
    pub fn open(
        config: CoordinatorConfig,
        clock: Arc<dyn Clock>,
        dir: Option<&Path>,
    ) -> Result<Coordinator, CoordinatorError> {
        match dir {
            Some(dir) => Coordinator::with_stores(config, clock, Some(&FileStores::new(dir)?)),
            None => Coordinator::with_stores(config, clock, None),
        }
    }

    /// Builds everything, its state kept in `stores` (`None`: in memory only).
    pub fn with_stores(
        config: CoordinatorConfig,
        clock: Arc<dyn Clock>,
        stores: Option<&dyn Stores>,
    ) -> Result<Coordinator, CoordinatorError> {
        let pools = match stores {
            Some(stores) => {
                Pools::with_store(config.pools, config.leases, clock.clone(), stores.leases()?)?
            }
            None => Pools::new(config.pools, config.leases, clock.clone())?,
        };
        let mut quotas = BTreeMap::new();
        for spec in config.quotas {
            let name = spec.name.clone();
            let quota = match stores {
                Some(stores) => Quota::with_store(spec, clock.clone(), stores.quota(&name)?)?,
                None => Quota::new(spec, clock.clone())?,
            };
            if quotas.insert(name.clone(), Arc::new(quota)).is_some() {
                return Err(CoordinatorError::invalid(
                    format!("quotas.{name}"),
                    "is defined twice",
                ));
            }
        }
        let mut queues = BTreeMap::new();
        for spec in config.queues {
            let quota = quotas.get(&spec.quota).cloned().ok_or_else(|| {
                CoordinatorError::invalid(
                    format!("queues.{}.quota", spec.name),
                    format!("no quota named {:?}", spec.quota),
                )
            })?;
            let mut queue =
                RequestQueue::new(spec.name.clone(), quota, spec.cache_ttl, clock.clone())
                    .with_take_timeout(spec.take_timeout)
                    .with_limits(spec.max_pending, spec.max_bytes);
            if let Some(stores) = stores {
                queue = queue.with_store(stores.queue(&spec.name)?)?;
            }
            queues.insert(spec.name, (spec.quota, Arc::new(queue)));
        }
        let mut breakers = BTreeMap::new();
        for spec in config.breakers {
            breakers.insert(spec.name.clone(), Breaker::new(spec, clock.clone())?);
        }
        Ok(Coordinator {
            pools: Arc::new(pools),
            quotas,
            queues,
            breakers,
        })
    }

    /// Applies what can change while running (a reloaded config): lease options, the
    /// rules and shares of existing quotas, the thresholds of existing breakers. Checks
    /// everything before changing anything. Pools, queues, and quotas or breakers added
    /// or removed take a restart; they are returned, by config path, for the caller to
    /// report.
    pub fn reconfigure(&self, config: &CoordinatorConfig) -> Result<Vec<String>, CoordinatorError> {
        let mut needs_restart = Vec::new();
        let mut quotas = Vec::new();
        for spec in &config.quotas {
            spec.validate()
                .map_err(|e| within("quotas", &spec.name, e))?;
            match self.quotas.get(&spec.name) {
                Some(quota) => quotas.push((quota, spec)),
                None => needs_restart.push(format!("quotas.{}", spec.name)),
            }
        }
        let mut breakers = Vec::new();
        for spec in &config.breakers {
            spec.validate()
                .map_err(|e| within("breakers", &spec.name, e))?;
            match self.breakers.get(&spec.name) {
                Some(breaker) => breakers.push((breaker, spec)),
                None => needs_restart.push(format!("breakers.{}", spec.name)),
            }
        }
        let quotas_gone = self
            .quotas
            .keys()
            .filter(|n| !config.quotas.iter().any(|q| &q.name == *n));
        needs_restart.extend(quotas_gone.map(|n| format!("quotas.{n}")));
        let breakers_gone = self
            .breakers
            .keys()
            .filter(|n| !config.breakers.iter().any(|b| &b.name == *n));
        needs_restart.extend(breakers_gone.map(|n| format!("breakers.{n}")));

        self.pools.reconfigure(config.leases)?;
        for (quota, spec) in quotas {
            quota.reconfigure(spec.clone())?;
        }
        for (breaker, spec) in breakers {
            breaker.reconfigure(spec.clone())?;
        }
        Ok(needs_restart)
    }

    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// Why some state cannot be written now (a full disk, say), if it cannot: the
    /// grants that would need it are refused meanwhile; reads and releases work.
    pub fn write_error(&self) -> Option<String> {
        self.pools
            .write_error()
            .or_else(|| self.quotas.values().find_map(|q| q.write_error()))
            .or_else(|| self.queues.values().find_map(|(_, q)| q.write_error()))
    }

    pub fn quota(&self, name: &str) -> Result<&Arc<Quota>, CoordinatorError> {
        self.quotas
            .get(name)
            .ok_or_else(|| not_found("quota", name))
    }

    pub fn queue(&self, name: &str) -> Result<&Arc<RequestQueue>, CoordinatorError> {
        self.queues
            .get(name)
            .map(|(_, q)| q)
            .ok_or_else(|| not_found("queue", name))
    }

    pub fn breaker(&self, name: &str) -> Result<&Arc<Breaker>, CoordinatorError> {
        self.breakers
            .get(name)
            .ok_or_else(|| not_found("breaker", name))
    }

    pub fn quotas(&self) -> impl Iterator<Item = &Arc<Quota>> {
        self.quotas.values()
    }

    /// Queues with the name of the quota pacing each.
    pub fn queues(&self) -> impl Iterator<Item = (&str, &str, &Arc<RequestQueue>)> {
        self.queues
            .iter()
            .map(|(name, (quota, queue))| (name.as_str(), quota.as_str(), queue))
    }

    pub fn breakers(&self) -> impl Iterator<Item = (&str, &Arc<Breaker>)> {
        self.breakers.iter().map(|(n, b)| (n.as_str(), b))
    }
}
