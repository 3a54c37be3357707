//! The node registry: one document per node in a collection of the agent's
//! own (`ams_agent.nodes` by default), upserted by node id, `lastSeen` from
//! the server's clock (`$currentDate`), a heartbeat counter, and a TTL index
//! that drops nodes autoscaling terminated long ago.
//!
//! Every operation has a deadline of its own on top of the driver's server
//! selection timeout, so a stalled server never hangs a caller.

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::Result;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use super::error::{Failure, RegistryError};
use crate::node::Role;
use crate::node::health::{AmsState, Health};
use crate::node::identity::NodeIdentity;
use crate::secret::Secret;

pub const TTL_INDEX: &str = "lastSeen_ttl";
pub const ROLE_INDEX: &str = "role_state";

/// Where the registry lives. The password is kept apart from the URI.
#[derive(Clone)]
pub struct Target {
    /// The URI without its password.
    pub uri: String,
    pub password: Option<Secret>,
    pub database: String,
    pub collection: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("uri", &self.shown())
            .field("password", &self.password)
            .field("database", &self.database)
            .field("collection", &self.collection)
            .finish()
    }
}

impl Target {
    /// The URI as printed: the password (kept apart) shows as `****`.
    pub fn shown(&self) -> String {
        match (crate::uri::MongoUri::parse(&self.uri), &self.password) {
            (Some(u), Some(p)) if u.user().is_some() => u.with_password(p.clone()).to_string(),
            (Some(u), _) => u.to_string(),
            (None, _) => crate::uri::redact(&self.uri),
        }
    }
}

/// Deadlines for talking to MongoDB.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub connect: Duration,
    /// How long one operation may wait for a usable server.
    pub select: Duration,
    /// The whole operation, server selection included.
    pub op: Duration,
}

impl Deadlines {
    /// Everything within `total`. Server selection gives up a little
    /// earlier than the operation, so when nothing answers the driver's own
    /// cause ("Connection refused", a DNS failure) is what gets reported,
    /// not a bare "did not answer" from the outer deadline.
    pub fn within(total: Duration) -> Self {
        let select = total.mul_f32(0.8);
        Deadlines {
            connect: select.min(Duration::from_secs(5)),
            select,
            op: total,
        }
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect: Duration::from_secs(5),
            select: Duration::from_secs(5),
            op: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Joining,
    Ready,
    Degraded,
    /// Taken out of rotation on purpose (graceful scale-in): the balancer
    /// drains it (HAProxy `drain`, out of Nginx) while it still reports.
    Draining,
    Leaving,
    Left,
}

impl NodeState {
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Ready => "ready",
            NodeState::Degraded => "degraded",
            NodeState::Draining => "draining",
            NodeState::Leaving => "leaving",
            NodeState::Left => "left",
        }
    }
}

/// Everything a heartbeat says about the node.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub identity: NodeIdentity,
    pub role: Role,
    pub state: NodeState,
    pub ams: AmsState,
    pub health: Health,
    pub interval: Duration,
    /// While the node drains: why, what started it, until when.
    pub drain: Option<DrainFields>,
    /// Advisory cloud notices (rebalance recommendation, scheduled
    /// maintenance), one line each.
    pub notices: Vec<String>,
}

/// The `drain` sub-document of a draining (or drained) node.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainFields {
    pub trigger: String,
    pub reason: String,
    pub since: std::time::SystemTime,
    pub deadline: std::time::SystemTime,
    /// How it ended (`empty`, `deadline-passed`, ...), once it did.
    pub outcome: Option<String>,
}

impl DrainFields {
    pub fn to_doc(&self) -> Document {
        use mongodb::bson::DateTime;
        let mut d = doc! {
            "trigger": &self.trigger,
            "reason": &self.reason,
            "since": DateTime::from_system_time(self.since),
            "deadline": DateTime::from_system_time(self.deadline),
        };
        if let Some(o) = &self.outcome {
            d.insert("outcome", o);
        }
        d
    }
}

/// What a failed step leaves in the node's document.
#[derive(Debug, Clone)]
pub struct LastError {
    pub step: String,
    pub message: String,
}

fn opt_str(v: &Option<String>) -> Bson {
    v.as_ref().map_or(Bson::Null, |s| Bson::String(s.clone()))
}

fn opt_f64(v: Option<f64>) -> Bson {
    v.map_or(Bson::Null, Bson::Double)
}

impl NodeReport {
    /// The `$set` part of the heartbeat upsert.
    pub fn set_fields(&self) -> Document {
        let id = &self.identity;
        let h = &self.health;
        doc! {
            "hostname": &id.hostname,
            "privateIp": id.private_ip.map_or(Bson::Null, |ip| Bson::String(ip.to_string())),
            "publicIp": id.public_ip.map_or(Bson::Null, |ip| Bson::String(ip.to_string())),
            "instanceType": opt_str(&id.instance_type),
            "availabilityZone": opt_str(&id.availability_zone),
            "idSource": id.source.name(),
            "provider": id.provider.map_or(Bson::Null, |p| Bson::String(p.name().into())),
            "region": opt_str(&id.region),
            "spot": id.spot.map_or(Bson::Null, Bson::Boolean),
            "role": self.role.name(),
            "nodeGroup": opt_str(&self.ams.node_group),
            "ams": {
                "mode": opt_str(&self.ams.mode),
                "service": &self.ams.service,
                "http": self.ams.answers(),
                "httpStatus": self.ams.http_status.map_or(Bson::Null, |s| Bson::Int32(s as i32)),
                "fallback": self.ams.fallback.as_ref().map_or(Bson::Null, |f| Bson::Document(doc! {
                    "from": "agent.toml",
                    "values": f.values.iter().map(|v| Bson::String(v.to_string())).collect::<Vec<_>>(),
                    "error": &f.error,
                    "since": mongodb::bson::DateTime::from_system_time(f.since),
                })),
            },
            "health": {
                "cpu": opt_f64(h.cpu),
                "cpuCount": h.cpu_count as i32,
                "load1": h.load[0],
                "load5": h.load[1],
                "load15": h.load[2],
                "memoryUsed": opt_f64(h.memory_used),
                "diskUsed": opt_f64(h.disk_used),
                "uptime": h.uptime_seconds as i64,
            },
            "state": self.state.name(),
            "drain": self.drain.as_ref().map_or(Bson::Null, |d| Bson::Document(d.to_doc())),
            "notices": self.notices.iter().map(|n| Bson::String(n.clone())).collect::<Vec<_>>(),
            "intervalSeconds": self.interval.as_secs_f64(),
            "agentVersion": env!("CARGO_PKG_VERSION"),
        }
    }

    /// The whole update document of a heartbeat. `joined` also stamps
    /// `joinedAt` (server clock) and clears an earlier `lastError`.
    pub fn update(&self, joined: bool) -> Document {
        let mut current = doc! { "lastSeen": true };
        if joined {
            current.insert("joinedAt", true);
        }
        let mut u = doc! {
            "$set": self.set_fields(),
            "$currentDate": current,
            "$inc": { "heartbeats": 1_i64 },
        };
        if joined {
            u.insert("$unset", doc! { "lastError": "" });
        }
        u
    }
}

/// An open registry: a driver client (lazy, pooled) and the collection.
pub struct Registry {
    client: Client,
    db: Database,
    coll: Collection<Document>,
    shown: String,
    deadlines: Deadlines,
}

impl Registry {
    /// Parses the URI and prepares the client. Connects lazily: nothing is
    /// sent until the first operation (except SRV/TXT lookups for
    /// `mongodb+srv://`, bounded by the connect deadline).
    pub async fn open(target: &Target, deadlines: Deadlines) -> Result<Registry, RegistryError> {
        let shown = target.shown();
        // The password goes into the URI the driver parses (never into a
        // message): some mechanisms (PLAIN) are refused without one at parse
        // time.
        let full = match &target.password {
            Some(pw) => match crate::uri::join_password(&target.uri, pw.expose()) {
                Some(full) => full,
                None => {
                    return Err(RegistryError::new(
                        Failure::Config,
                        format!("a MongoDB password is set, but {shown} names no user"),
                    ));
                }
            },
            None => target.uri.clone(),
        };
        let parse = ClientOptions::parse(full.as_str());
        let mut opts = match tokio::time::timeout(deadlines.connect, parse).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                let mut err = RegistryError::from_driver(&e, &shown, "reading the URI");
                // By position: a URI the message quotes loses its password.
                err.message = crate::secret::redact_uris(&err.message);
                return Err(err);
            }
            Err(_) => {
                return Err(RegistryError::new(
                    Failure::Timeout,
                    format!(
                        "resolving the hosts of {shown} took longer than {}",
                        crate::human::show_duration(deadlines.connect)
                    ),
                ));
            }
        };
        opts.app_name = Some(format!("ams-agent {}", env!("CARGO_PKG_VERSION")));
        opts.connect_timeout = Some(deadlines.connect);
        opts.server_selection_timeout = Some(deadlines.select);
        // While an operation waits for the server, the driver re-checks it
        // every 500 ms; between operations this slower pace suffices.
        opts.heartbeat_freq = Some(Duration::from_secs(10));
        opts.max_pool_size = Some(2);
        opts.min_pool_size = Some(0);
        let client = Client::with_options(opts)
            .map_err(|e| RegistryError::from_driver(&e, &shown, "preparing the client"))?;
        let db = client.database(&target.database);
        let coll = db.collection::<Document>(&target.collection);
        Ok(Registry {
            client,
            db,
            coll,
            shown,
            deadlines,
        })
    }

    pub fn shown_uri(&self) -> &str {
        &self.shown
    }

    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// Runs `fut` within the operation deadline, turning driver errors into
    /// clear messages.
    async fn bounded<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(limit, fut.into_future()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RegistryError::from_driver(&e, &self.shown, what)),
            Err(_) => Err(RegistryError::new(
                Failure::Timeout,
                format!(
                    "{what}: MongoDB at {} did not answer within {}",
                    self.shown,
                    crate::human::show_duration(limit)
                ),
            )),
        }
    }

    /// `ping` on the registry's database: reachable, and (with
    /// credentials) authenticated.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.bounded(
            "pinging",
            self.deadlines.op,
            self.db.run_command(doc! { "ping": 1 }),
        )
        .await
        .map(|_| ())
    }

    /// Creates the indexes if missing; when the TTL changed, adjusts it with
    /// `collMod` instead of failing.
    pub async fn ensure_indexes(&self, ttl: Duration) -> Result<(), RegistryError> {
        let models = vec![
            IndexModel::builder()
                .keys(doc! { "lastSeen": 1 })
                .options(
                    IndexOptions::builder()
                        .name(TTL_INDEX.to_string())
                        .expire_after(ttl)
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! { "role": 1, "state": 1 })
                .options(IndexOptions::builder().name(ROLE_INDEX.to_string()).build())
                .build(),
        ];
        let res = self
            .bounded(
                "creating the registry indexes",
                self.deadlines.op,
                self.coll.create_indexes(models),
            )
            .await;
        match res {
            Ok(_) => Ok(()),
            // IndexOptionsConflict / IndexKeySpecsConflict: another TTL.
            Err(e) if matches!(e.code, Some(85) | Some(86)) => {
                tracing::info!(
                    "changing the TTL of {}.{} to {}",
                    self.db.name(),
                    self.coll.name(),
                    crate::human::show_duration(ttl)
                );
                self.bounded(
                    "changing the TTL index",
                    self.deadlines.op,
                    self.db.run_command(doc! {
                        "collMod": self.coll.name(),
                        "index": { "name": TTL_INDEX, "expireAfterSeconds": ttl.as_secs() as i64 },
                    }),
                )
                .await
                .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// The heartbeat: upsert by node id.
    pub async fn heartbeat(&self, report: &NodeReport, joined: bool) -> Result<(), RegistryError> {
        self.upsert(
            &report.identity.id,
            report.update(joined),
            self.deadlines.op,
        )
        .await
    }

    async fn upsert(
        &self,
        id: &str,
        update: Document,
        limit: Duration,
    ) -> Result<(), RegistryError> {
        self.bounded(
            "writing the node document",
            limit,
            self.coll
                .update_one(doc! { "_id": id }, update)
                .upsert(true),
        )
        .await
        .map(|_| ())
    }

    /// Sets the node's state only (for `leave` and shutdown), within `limit`.
    pub async fn set_state(
        &self,
        id: &str,
        state: NodeState,
        limit: Duration,
    ) -> Result<(), RegistryError> {
        self.upsert(
            id,
            doc! {
                "$set": { "state": state.name() },
                "$currentDate": { "lastSeen": true },
            },
            limit,
        )
        .await
    }

    /// Sets the node's state with its `drain` sub-document (draining, or
    /// left at the end of a drain), within `limit`.
    pub async fn set_drain_state(
        &self,
        id: &str,
        state: NodeState,
        drain: &DrainFields,
        limit: Duration,
    ) -> Result<(), RegistryError> {
        self.upsert(
            id,
            doc! {
                "$set": { "state": state.name(), "drain": drain.to_doc() },
                "$currentDate": { "lastSeen": true },
            },
            limit,
        )
        .await
    }

    /// Deletes the documents of another collection on the same server that
    /// match `filter` (this node's own `clusternode` rows); how many.
    pub async fn delete_in(
        &self,
        database: &str,
        collection: &str,
        filter: Document,
    ) -> Result<u64, RegistryError> {
        let coll = self
            .client
            .database(database)
            .collection::<Document>(collection);
        let what = format!("deleting from {database}.{collection}");
        self.bounded(&what, self.deadlines.op, coll.delete_many(filter))
            .await
            .map(|r| r.deleted_count)
    }

    /// Records a failed step in the node's document, within `limit`.
    pub async fn record_error(
        &self,
        id: &str,
        err: &LastError,
        limit: Duration,
    ) -> Result<(), RegistryError> {
        self.upsert(
            id,
            doc! {
                // Dotted fields: `$set: {lastError: {…}}` next to
                // `$currentDate: {"lastError.at": …}` is a path conflict
                // (code 40) that a real mongod refuses.
                "$set": { "lastError.step": &err.step, "lastError.message": &err.message },
                "$currentDate": { "lastError.at": true },
            },
            limit,
        )
        .await
    }

    /// Every node document (the fields `status` shows) and the server's
    /// clock, so ages do not depend on this machine's clock.
    pub async fn list(
        &self,
    ) -> Result<(Vec<Document>, Option<mongodb::bson::DateTime>), RegistryError> {
        let hello = self
            .bounded(
                "asking the server's time",
                self.deadlines.op,
                self.db.run_command(doc! { "hello": 1 }),
            )
            .await?;
        let now = hello.get_datetime("localTime").ok().copied();
        let projection = doc! {
            "hostname": 1, "privateIp": 1, "role": 1, "state": 1, "nodeGroup": 1, "provider": 1,
            "health.cpu": 1, "health.memoryUsed": 1, "lastSeen": 1, "intervalSeconds": 1,
            "lastError": 1, "ams.http": 1, "drain": 1, "notices": 1,
        };
        let deadline = self.deadlines.op;
        let fetch = async {
            let mut cursor = self
                .coll
                .find(doc! {})
                .projection(projection)
                .batch_size(10_000)
                .sort(doc! { "role": 1, "_id": 1 })
                .await?;
            let mut docs = Vec::new();
            while cursor.advance().await? {
                docs.push(cursor.deserialize_current()?);
            }
            Ok(docs)
        };
        let docs = self.bounded("listing the nodes", deadline, fetch).await?;
        Ok((docs, now))
    }

    /// The server's clock (`hello.localTime`), within the operation deadline.
    pub async fn server_time(&self) -> Result<mongodb::bson::DateTime, RegistryError> {
        let hello = self
            .bounded(
                "asking the server's time",
                self.deadlines.op,
                self.db.run_command(doc! { "hello": 1 }),
            )
            .await?;
        hello.get_datetime("localTime").copied().map_err(|_| {
            RegistryError::new(
                Failure::Server,
                format!(
                    "asking the server's time: MongoDB at {} sent no localTime in hello",
                    self.shown
                ),
            )
        })
    }

    /// One node's document, by id (None when there is none).
    pub async fn find_node(&self, id: &str) -> Result<Option<Document>, RegistryError> {
        self.bounded(
            "reading the node document",
            self.deadlines.op,
            self.coll.find_one(doc! { "_id": id }),
        )
        .await
    }

    /// At most `limit` documents of another collection on the same server
    /// (AMS's own `clusternode` rows), within the operation deadline.
    pub async fn find_in(
        &self,
        database: &str,
        collection: &str,
        filter: Document,
        limit: i64,
    ) -> Result<Vec<Document>, RegistryError> {
        let coll = self
            .client
            .database(database)
            .collection::<Document>(collection);
        let what = format!("reading {database}.{collection}");
        let fetch = async {
            let mut cursor = coll.find(filter).limit(limit).await?;
            let mut docs = Vec::new();
            while cursor.advance().await? {
                docs.push(cursor.deserialize_current()?);
            }
            Ok(docs)
        };
        self.bounded(&what, self.deadlines.op, fetch).await
    }

    /// Closes the pool (ends sessions politely) within a short deadline.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_uri_masks_a_separate_password() {
        let mut t = Target {
            uri: "mongodb://ams@h1,h2/admin?x=@".into(),
            password: Some("pw".into()),
            database: "d".into(),
            collection: "c".into(),
        };
        assert_eq!(t.shown(), "mongodb://ams:****@h1,h2/admin?x=@");
        t.password = None;
        assert_eq!(t.shown(), "mongodb://ams@h1,h2/admin?x=@");
        t.uri = "mongodb://h".into();
        t.password = Some("pw".into());
        assert_eq!(t.shown(), "mongodb://h");
    }
}
