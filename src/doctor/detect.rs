//! Which roles this host plays, from what is installed: an AMS install
//! (node), mongod (db), HAProxy or Nginx with an `ams-agent lb` section (lb).

use std::path::Path;

use super::Role;
use super::env::Env;

/// The roles found, each with what gave it away.
pub fn detect(env: &Env) -> Vec<(Role, String)> {
    let mut found = Vec::new();
    let (home, _) = env.ams_home();
    let red5 = crate::ams::AmsLayout::new(&home).red5_properties();
    if env.host.exists(&red5) {
        found.push((
            Role::Node,
            format!("Ant Media Server at {}", home.display()),
        ));
    }
    let conf = &env.settings.mongod_conf;
    if env.host.exists(conf) {
        found.push((Role::Db, format!("mongod, {}", conf.display())));
    } else if env.host.exists(Path::new("/usr/bin/mongod")) {
        found.push((Role::Db, "mongod, /usr/bin/mongod".into()));
    }
    if let Some((kind, file)) = super::lb::section_of(env) {
        found.push((
            Role::Lb,
            format!("{kind} with an ams-agent lb section in {}", file.display()),
        ));
    }
    found
}
