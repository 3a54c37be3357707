//! The MongoDB host: installing mongodb-org from MongoDB's apt repository,
//! its limits and transparent huge pages, `/etc/mongod.conf`, the first
//! admin user and authorization (`ams-agent setup mongo`).

pub mod admin;
pub mod conf;
pub mod os;
pub mod repo;
pub mod setup;
pub mod tuning;
