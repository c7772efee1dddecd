//! State shared by every request, and the step every data-plane request starts with: from a
//! principal to a connection to its tenant.

use std::sync::Arc;

use tenantdb::{Error, Fleet, Lease, TenantId};
use tokio::sync::Semaphore;

use crate::auth::{Authenticator, Principal};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::hrana::streams::Streams;

pub struct App {
    pub fleet: Arc<Fleet>,
    pub auth: Authenticator,
    pub streams: Streams,
    pub config: ServerConfig,
    pub sql_slots: Arc<Semaphore>,
    pub metrics: crate::metrics::Metrics,
}

impl App {
    pub fn new(fleet: Arc<Fleet>, config: ServerConfig) -> Result<Arc<App>, crate::ServeError> {
        // Before the keys are parsed, so that this refusal is what an operator reads.
        if config.dev_login {
            crate::dev_login::check(&config.auth)?;
        }
        let auth = Authenticator::new(&config.auth)?;
        let streams = Streams::new(config.stream_idle_timeout, config.max_streams)?;
        Ok(Arc::new(App {
            fleet,
            auth,
            streams,
            sql_slots: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            metrics: crate::metrics::Metrics::default(),
            config,
        }))
    }

    /// The tenant a data-plane request addresses.
    pub fn tenant_of(principal: &Principal) -> Result<TenantId, ApiError> {
        principal.tenant().cloned().ok_or_else(|| {
            ApiError::bad_request("an admin token must name the tenant in the x-tenant header")
        })
    }

    /// A connection to the principal's tenant, creating a user's database on first use when
    /// lazy provisioning is on. Blocking.
    pub fn connect(&self, principal: &Principal, tenant: &TenantId) -> Result<Lease, ApiError> {
        match self.fleet.connect(tenant) {
            Err(Error::TenantNotFound(_))
                if self.config.lazy_provisioning && !principal.is_admin() =>
            {
                let actor = format!("lazy:{}", principal.actor());
                self.fleet.ensure_tenant(tenant, &actor)?;
                Ok(self.fleet.connect(tenant)?)
            }
            other => Ok(other?),
        }
    }
}
