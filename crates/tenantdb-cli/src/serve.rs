//! `tenantdb serve` and `tenantdb token`: configuration from flags and environment, dev
//! secrets when nothing is configured, and the server's lifetime.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tenantdb::{Config, Fleet, GuardConfig, MigrateOptions, NoProgress, TenantId};
use tenantdb_server::ServerConfig;
use tenantdb_server::auth::{AuthConfig, mint_token_for};
use tenantdb_server::secrets::DevSecrets;

use crate::args::{AuthArgs, ServeArgs};

/// The authentication settings given (by flag or environment), by their flag names.
fn configured_auth(args: &AuthArgs) -> Vec<&'static str> {
    [
        (
            "--jwt-secret/TENANTDB_JWT_SECRET",
            args.jwt_secret.is_some(),
        ),
        (
            "--jwt-public-key/TENANTDB_JWT_PUBLIC_KEY",
            args.jwt_public_key.is_some(),
        ),
        ("--jwks/TENANTDB_JWKS", args.jwks.is_some()),
        (
            "--admin-token/TENANTDB_ADMIN_TOKEN",
            args.admin_token.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// Builds the auth configuration; with no secret, key or admin token configured at all, uses
/// (creating on first use) the data directory's dev secrets.
fn auth_config(args: &AuthArgs, data_dir: &Path) -> Result<(AuthConfig, Option<DevSecrets>)> {
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut config = AuthConfig {
        jwt_secret: args.jwt_secret.clone(),
        jwt_public_key_pem: args.jwt_public_key.as_deref().map(read).transpose()?,
        jwks_json: args.jwks.as_deref().map(read).transpose()?,
        issuer: args.jwt_issuer.clone(),
        tenant_claim: args.tenant_claim.clone(),
        admin_token: args.admin_token.clone(),
        ..AuthConfig::default()
    };
    if !configured_auth(args).is_empty() {
        return Ok((config, None));
    }
    let dev = tenantdb_server::secrets::load_or_create(data_dir)
        .context("creating development secrets")?;
    config.jwt_secret = Some(dev.jwt_secret.clone());
    config.admin_token = Some(dev.admin_token.clone());
    Ok((config, Some(dev)))
}

pub fn token(data_dir: &Path, id: &str, ttl: &str, args: &AuthArgs) -> Result<()> {
    let tenant = TenantId::new(id)?;
    let ttl = parse_duration(ttl)?;
    let mut config = AuthConfig {
        jwt_secret: args.jwt_secret.clone(),
        issuer: args.jwt_issuer.clone(),
        tenant_claim: args.tenant_claim.clone(),
        ..AuthConfig::default()
    };
    if config.jwt_secret.is_none() {
        match tenantdb_server::secrets::load(data_dir).context("reading development secrets")? {
            Some(dev) => config.jwt_secret = Some(dev.jwt_secret),
            None => bail!(
                "no JWT secret: set TENANTDB_JWT_SECRET (or --jwt-secret), or run `tenantdb serve` \
                 once without any auth configuration to create development secrets in {}",
                data_dir.join("secrets.toml").display()
            ),
        }
    }
    println!("{}", mint_token_for(&config, &tenant, ttl)?);
    Ok(())
}

/// `90s`, `30m`, `1h`, `7d`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .with_context(|| format!("invalid duration {text:?}: use 90s, 30m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("invalid duration {text:?}: use 90s, 30m, 1h or 7d"),
    };
    if secs == 0 {
        bail!("the duration must be positive");
    }
    Ok(Duration::from_secs(secs))
}

/// Each cached tenant keeps about three files open (the database, its log and the log's
/// shared-memory index), so the default cache of 1,000 tenants needs some 3,000 descriptors:
/// more than the soft limit of 1,024 that many systems start processes with, and the hard limit
/// is usually far higher. Raise the soft limit to the hard one, and warn when even that is short
/// of what the cache needs.
#[cfg(unix)]
fn raise_open_file_limit(cache_capacity: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` only writes the `rlimit` it is given, a valid one owned here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let needed = (cache_capacity as u64)
        .saturating_mul(3)
        .saturating_add(256);
    if limit.rlim_cur < limit.rlim_max {
        // An unlimited hard limit is not a value the soft limit may take for open files.
        let target = if limit.rlim_max == libc::RLIM_INFINITY {
            needed.max(limit.rlim_cur)
        } else {
            limit.rlim_max
        };
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` only reads the `rlimit` it is given, a valid one owned here.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_cur < needed {
        tracing::warn!(
            limit = limit.rlim_cur,
            needed,
            "the open-file limit is below what the connection cache may need; raise it \
             (ulimit -n) or lower --cache-capacity"
        );
    }
}

pub fn serve(data_dir: &Path, args: ServeArgs) -> Result<()> {
    #[cfg(unix)]
    raise_open_file_limit(args.cache_capacity);
    // Dev sign-in hands a token for any user to anyone who asks. Tied to the generated
    // development secret, it can never mint tokens that a real deployment would accept.
    let configured = configured_auth(&args.auth);
    if args.dev_login && !configured.is_empty() {
        bail!(
            "--dev-login works only with the generated development secrets, and authentication \
             is configured ({}); unset it to try the demo, or drop --dev-login",
            configured.join(", ")
        );
    }
    let (auth, dev) = auth_config(&args.auth, data_dir)?;
    let trash_retention = parse_duration(&args.trash_retention)?;
    let mut webhook_secrets: Vec<String> = args
        .webhook_secret
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if webhook_secrets.is_empty()
        && let Some(dev) = &dev
    {
        webhook_secrets.push(dev.webhook_secret.clone());
    }
    let mut config = Config::new(data_dir);
    config.cache_capacity = args.cache_capacity.max(1);
    config.audit_writes = !args.no_audit;
    config.guard = GuardConfig {
        allow_ddl: args.allow_ddl,
        statement_timeout: Duration::from_millis(args.statement_timeout_ms.max(1)),
        max_response_bytes: args.max_response_bytes,
        max_database_bytes: args.max_database_bytes,
        ..GuardConfig::default()
    };
    let fleet = Arc::new(
        Fleet::open(config)
            .with_context(|| format!("opening data directory {}", data_dir.display()))?,
    );
    fleet.claim_serving()?;
    if let Some(dir) = &args.migrations {
        start_rollout(&fleet, dir)?;
    }
    let server = ServerConfig {
        listen: args.listen,
        auth,
        lazy_provisioning: !args.no_lazy_provisioning,
        max_body_bytes: args.max_body_bytes,
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        max_concurrent_requests: args.max_concurrent_requests.max(1),
        stream_idle_timeout: Duration::from_secs(args.stream_idle_timeout_secs.max(1)),
        webhook_secrets,
        trash_retention,
        migrations_dir: args.migrations.clone(),
        cors_origins: args.cors_origins.clone(),
        dev_login: args.dev_login,
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(server.listen)
            .await
            .with_context(|| format!("listening on {}", server.listen))?;
        let addr = listener.local_addr()?;
        eprintln!("tenantdb serving {} on http://{addr}", data_dir.display());
        if let Some(dev) = &dev {
            eprintln!(
                "development mode: secrets generated in {} (mode 0600)\n  user token:     tenantdb --data-dir {} token alice\n  admin token:    {}\n  webhook secret: {}",
                data_dir.join("secrets.toml").display(),
                data_dir.display(),
                dev.admin_token,
                dev.webhook_secret
            );
        }
        if !server.cors_origins.is_empty() {
            let origins: Vec<String> = server.cors_origins.iter().map(|o| o.to_string()).collect();
            eprintln!("CORS: browser pages from {} may call the data plane", origins.join(", "));
        }
        if server.dev_login {
            eprintln!(
                "dev sign-in on: POST http://{addr}/dev/token {{\"user\":\"alice\"}} mints a token for any user (development only)"
            );
            if !addr.ip().is_loopback() {
                eprintln!("warning: dev sign-in is reachable from other machines on {addr}");
            }
        }
        tenantdb_server::serve(fleet, server, listener, shutdown_signal()).await?;
        eprintln!("tenantdb stopped");
        Ok(())
    })
}

/// Registers the migrations (refusing to start on an edited or broken one), then rolls them
/// out while the server already serves.
fn start_rollout(fleet: &Arc<Fleet>, dir: &Path) -> Result<()> {
    // Register the new migrations (and rebuild the template) before serving, so a tenant
    // created by the first request already has the latest schema; only reaching the existing
    // tenants runs in the background.
    fleet
        .register_migrations(dir)
        .with_context(|| format!("registering the migrations in {}", dir.display()))?;
    let fleet = Arc::clone(fleet);
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("tenantdb-rollout".into())
        .spawn(move || {
            match fleet.migrate(&dir, &MigrateOptions::default(), &NoProgress, "serve") {
                Ok(report) => tracing::info!(
                    version = report.schema_version,
                    migrated = report.migrated,
                    failed = report.failed.len(),
                    "migrations rolled out"
                ),
                Err(e) => tracing::error!(error = %e, "migration rollout failed"),
            }
        })
        .context("starting the migration rollout")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    eprintln!("tenantdb: shutting down (finishing in-flight requests)");
}
