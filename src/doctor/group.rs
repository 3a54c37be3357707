//! `ams.nodegroup`: AMS's node group (`nodeGroup` of conf/red5.properties,
//! AMS's default `default` when the key is absent) against what the
//! registry shows for this node (`nodeGroup` of its document, sent by the
//! reporter from that file) and what agent.toml recorded (`[node]
//! node_group`, the reporter's fallback). A balancer that renders one
//! group (`lb --group`) and AMS's own multi-level cluster both go by it.

use mongodb::bson::Document;

use super::Outcome;
use super::env::Env;
use crate::human::escape;

/// AMS's default when red5.properties has no `nodeGroup`.
pub const AMS_DEFAULT_GROUP: &str = crate::ams::mode::DEFAULT_NODE_GROUP;

fn fallback_has_group(doc: &Document) -> Option<String> {
    let f = doc
        .get_document("ams")
        .ok()?
        .get_document("fallback")
        .ok()?;
    let values = f.get_array("values").ok()?;
    values
        .iter()
        .any(|v| v.as_str() == Some("nodeGroup"))
        .then(|| f.get_str("error").unwrap_or("").to_string())
}

/// A group as the messages show it: the name, or AMS's default.
fn shown(g: Option<&str>) -> String {
    match g {
        Some(g) => format!("`{}`", escape(g)),
        None => format!("none (AMS uses `{AMS_DEFAULT_GROUP}`)"),
    }
}

pub fn node_group(env: &Env) -> Outcome {
    let files = match env.ams() {
        Ok(f) => f,
        Err(e) => {
            return Outcome::fail(e.clone(), "pass the AMS install folder with --ams-home");
        }
    };
    // The reporter sends the file's value, or null when there is none.
    let in_file = files
        .red5
        .get("nodeGroup")
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty());
    let recorded = env
        .config()
        .as_ref()
        .ok()
        .and_then(|c| c.as_ref())
        .and_then(|c| c.node.node_group.clone());
    let (id, _, doc) = match super::node::this_node(env) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let g = shown(in_file.as_deref());
    let Some(doc) = doc else {
        return Outcome::skip(format!(
            "node {id} has no registry document to compare with (see registry.node); AMS's node group is {g}"
        ));
    };
    let in_registry = doc.get_str("nodeGroup").ok().map(str::to_string);
    judge(
        &id,
        in_file.as_deref(),
        in_registry.as_deref(),
        recorded.as_deref(),
        fallback_has_group(&doc).as_deref(),
    )
}

/// The verdict: AMS's file against the registry (a failure when they
/// differ), then agent.toml's record (a warning).
fn judge(
    id: &str,
    in_file: Option<&str>,
    in_registry: Option<&str>,
    recorded: Option<&str>,
    reporter_cannot_read: Option<&str>,
) -> Outcome {
    let g = shown(in_file);
    if in_registry != in_file {
        let result = format!(
            "AMS's node group is {g} (conf/red5.properties), but the registry shows {} for node {id}",
            shown(in_registry)
        );
        return match reporter_cannot_read {
            Some(why) => Outcome::fail(
                format!(
                    "{result}: the reporter cannot read red5.properties ({})",
                    escape(why)
                ),
                "give the reporter read access to the AMS files (its drop-in's group: sudo ams-agent join … again), then sudo systemctl restart ams-agent",
            ),
            None => Outcome::fail(
                result,
                "sudo systemctl restart ams-agent (it re-reads red5.properties)",
            ),
        };
    }
    match recorded {
        Some(r) if Some(r) != in_file => Outcome::warn(
            format!(
                "node group {g} in AMS and the registry, but agent.toml recorded `{}` (its fallback when AMS's files cannot be read)",
                escape(r)
            ),
            format!(
                "sudo ams-agent join --mongo … --node-group {} (records it everywhere)",
                in_file.map_or(AMS_DEFAULT_GROUP.to_string(), |f| escape(f).into_owned())
            ),
        ),
        _ => Outcome::ok(format!(
            "node group {g}: conf/red5.properties, the registry{} agree",
            if recorded.is_some() {
                " and agent.toml"
            } else {
                ""
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn the_file_and_the_registry_must_agree_none_included() {
        let st = |f, r, a, why| judge("n1", f, r, a, why).status;
        assert_eq!(st(Some("eu"), Some("eu"), Some("eu"), None), Status::Ok);
        // No key in the file: the reporter sends null; AMS uses `default`.
        assert_eq!(st(None, None, None, None), Status::Ok);
        assert_eq!(st(None, Some("default"), None, None), Status::Fail);
        assert_eq!(st(Some("eu"), None, None, None), Status::Fail);
        assert_eq!(st(Some("eu"), Some("us"), Some("eu"), None), Status::Fail);
        assert_eq!(st(Some("eu"), Some("eu"), Some("us"), None), Status::Warn);
        let o = judge(
            "n1",
            Some("eu"),
            Some("us"),
            None,
            Some("Permission denied"),
        );
        assert!(
            o.result
                .contains("cannot read red5.properties (Permission denied)"),
            "{o:?}"
        );
        let o = judge("n1", Some("eu\u{1b}[2J"), Some("eu"), None, None);
        assert!(!o.result.contains('\u{1b}'), "{o:?}");
    }
}
