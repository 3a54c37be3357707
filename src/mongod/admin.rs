//! The local mongod through the official driver: readiness, the first admin
//! user (through the localhost exception) and the proof that authorization
//! is enforced.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use mongodb::Client;
use mongodb::bson::{Document, doc};
use mongodb::options::{AuthMechanism, ClientOptions, Credential, ServerAddress};

use crate::mongo::error::{Failure, RegistryError};
use crate::secret::Secret;

/// Codes mongod answers for "not allowed" and "user already exists".
const UNAUTHORIZED: i32 = 13;
const USER_EXISTS: i32 = 51003;

/// The admin account `setup mongo` creates and logs in as.
#[derive(Debug, Clone)]
pub struct AdminLogin {
    pub user: String,
    pub password: Secret,
}

/// mongod on this host, reached over loopback (where the localhost
/// exception applies).
#[derive(Debug, Clone)]
pub struct LocalMongod {
    pub host: String,
    pub port: u16,
}

impl LocalMongod {
    pub fn new(port: u16) -> Self {
        LocalMongod {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// The address as printed (never with a password).
    pub fn shown(&self, user: Option<&str>) -> String {
        match user {
            Some(u) => format!(
                "mongodb://{u}:****@{}:{}/?authSource=admin",
                self.host, self.port
            ),
            None => format!("mongodb://{}:{}", self.host, self.port),
        }
    }

    fn client(
        &self,
        login: Option<&AdminLogin>,
        deadline: Duration,
    ) -> Result<Client, RegistryError> {
        let mut opts = ClientOptions::default();
        opts.hosts = vec![ServerAddress::Tcp {
            host: self.host.clone(),
            port: Some(self.port),
        }];
        opts.direct_connection = Some(true);
        opts.app_name = Some(format!("ams-agent {}", env!("CARGO_PKG_VERSION")));
        opts.connect_timeout = Some(deadline.min(Duration::from_secs(5)));
        opts.server_selection_timeout = Some(deadline.mul_f32(0.8));
        opts.max_pool_size = Some(1);
        opts.credential = login.map(|l| {
            Credential::builder()
                .username(l.user.clone())
                .password(l.password.expose().to_string())
                .source("admin".to_string())
                .mechanism(AuthMechanism::ScramSha256)
                .build()
        });
        Client::with_options(opts)
            .map_err(|e| RegistryError::from_driver(&e, &self.shown(None), "preparing the client"))
    }

    /// Runs one command on `admin` within `deadline` (a client of its own,
    /// closed afterwards).
    pub async fn command(
        &self,
        login: Option<&AdminLogin>,
        command: Document,
        what: &str,
        deadline: Duration,
    ) -> Result<Document, RegistryError> {
        let shown = self.shown(login.map(|l| l.user.as_str()));
        let client = self.client(login, deadline)?;
        let admin = client.database("admin");
        let out =
            match tokio::time::timeout(deadline, admin.run_command(command).into_future()).await {
                Ok(Ok(d)) => Ok(d),
                Ok(Err(e)) => Err(RegistryError::from_driver(&e, &shown, what)),
                Err(_) => Err(RegistryError::new(
                    Failure::Timeout,
                    format!(
                        "{what}: mongod at {shown} did not answer within {}",
                        humantime::format_duration(deadline)
                    ),
                )),
            };
        client.shutdown().await;
        out
    }

    /// Pings until mongod answers or `timeout` passes; the error says what
    /// was waited for and the last reason it did not answer.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last;
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let attempt = left
                .min(Duration::from_secs(2))
                .max(Duration::from_millis(200));
            let t0 = Instant::now();
            match self
                .command(None, doc! {"ping": 1}, "pinging", attempt)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.transient() => last = e.message,
                Err(e) => return Err(e.into()),
            }
            if start.elapsed() >= timeout {
                bail!(
                    "waiting for mongod to answer on {}:{}: no answer within {} ({last}); see `journalctl -u mongod`",
                    self.host,
                    self.port,
                    humantime::format_duration(timeout)
                );
            }
            // Refused connections fail at once: pace the retries.
            if let Some(rest) = Duration::from_millis(200).checked_sub(t0.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }

    /// Whether `login` works and has the root role.
    pub async fn admin_is_root(
        &self,
        login: &AdminLogin,
        deadline: Duration,
    ) -> Result<bool, RegistryError> {
        let info = self
            .command(
                Some(login),
                doc! {"usersInfo": {"user": &login.user, "db": "admin"}},
                "reading the admin user",
                deadline,
            )
            .await?;
        let users = info.get_array("users").cloned().unwrap_or_default();
        Ok(users.iter().filter_map(|u| u.as_document()).any(|u| {
            u.get_array("roles").is_ok_and(|roles| {
                roles
                    .iter()
                    .filter_map(|r| r.as_document())
                    .any(|r| r.get_str("role") == Ok("root") && r.get_str("db") == Ok("admin"))
            })
        }))
    }

    /// Whether an unauthenticated client is refused (authorization on).
    pub async fn refuses_anonymous(&self, deadline: Duration) -> Result<bool, RegistryError> {
        match self
            .command(
                None,
                doc! {"listDatabases": 1, "nameOnly": true},
                "listing databases",
                deadline,
            )
            .await
        {
            Ok(_) => Ok(false),
            Err(e) if e.code == Some(UNAUTHORIZED) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Creates the admin user (role root, SCRAM-SHA-256) unless it already
    /// exists with this password. On a fresh mongod with authorization on,
    /// this goes through the localhost exception.
    pub async fn ensure_admin(&self, login: &AdminLogin, deadline: Duration) -> Result<Created> {
        match self.admin_is_root(login, deadline).await {
            Ok(true) => return Ok(Created::AlreadyThere),
            Ok(false) => bail!(
                "user {} exists on admin but does not have the root role; grant it, or pass --admin-user with another name",
                login.user
            ),
            Err(e) if e.failure == Failure::Auth => {}
            Err(e) => return Err(e.into()),
        }
        let create = doc! {
            "createUser": &login.user,
            "pwd": login.password.expose(),
            "roles": [{"role": "root", "db": "admin"}],
            "mechanisms": ["SCRAM-SHA-256"],
        };
        match self
            .command(None, create, "creating the admin user", deadline)
            .await
        {
            Ok(_) => Ok(Created::Now),
            Err(e) if e.code == Some(UNAUTHORIZED) => bail!(
                "mongod already has users, and none is {} with this password (the localhost exception is closed); pass --admin-user and --admin-password-file of an existing root user",
                login.user
            ),
            Err(e) if e.code == Some(USER_EXISTS) => bail!(
                "user {} already exists on admin with another password; pass its password with --admin-password-file",
                login.user
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Proves authorization: an anonymous command is refused, and the admin
    /// logs in (SCRAM-SHA-256) and pings.
    pub async fn verify(&self, login: &AdminLogin, deadline: Duration) -> Result<()> {
        if !self.refuses_anonymous(deadline).await? {
            bail!(
                "mongod at {}:{} still answers unauthenticated commands: authorization is not in effect (is mongod running with {}?)",
                self.host,
                self.port,
                super::conf::MONGOD_CONF
            );
        }
        self.command(
            Some(login),
            doc! {"ping": 1},
            "logging in as the admin user",
            deadline,
        )
        .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Now,
    AlreadyThere,
}
