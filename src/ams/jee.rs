//! `conf/jee-container.xml` holds blocks fenced by marker comments. Disabled:
//! `<!-- cluster start … cluster end -->` (one big comment). Enabled:
//! `<!-- cluster start -->` … `<!-- cluster end -->` (live XML between two
//! small comments). This toggles them exactly like `change_server_mode.sh`
//! (the `cluster` blocks) and `enable_ssl.sh` (the `https` block), but
//! idempotently, and checks that the result is well-formed XML.

use anyhow::{Context, Result, bail};

/// A kind of fenced block: `cluster` or `https`.
struct Fence {
    start_off: String,
    start_on: String,
    end_off: String,
    end_on: String,
}

impl Fence {
    fn new(name: &str) -> Self {
        Fence {
            start_off: format!("<!-- {name} start"),
            start_on: format!("<!-- {name} start -->"),
            end_off: format!("{name} end -->"),
            end_on: format!("<!-- {name} end -->"),
        }
    }

    fn disable(&self, xml: &str) -> String {
        xml.replace(&self.start_on, &self.start_off)
            .replace(&self.end_on, &self.end_off)
    }
}

/// How the cluster blocks of a jee-container.xml stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    Enabled,
    Disabled,
    Mixed,
}

/// How the blocks named `name` stand; `needs` says what lacks them.
fn block_state(xml: &str, name: &str, needs: &str) -> Result<BlockState> {
    let f = Fence::new(name);
    let starts = xml.matches(&f.start_off).count();
    let starts_on = xml.matches(&f.start_on).count();
    let ends = xml.matches(&f.end_off).count();
    let ends_on = xml.matches(&f.end_on).count();
    if starts == 0 {
        bail!(
            "conf/jee-container.xml has no {name} blocks (markers `{}` … `{}`); {needs}",
            f.start_off,
            f.end_off
        );
    }
    if starts != ends {
        bail!(
            "conf/jee-container.xml has {starts} {name} start markers but {ends} end markers; it was edited by hand, fix it or restore it from the AMS package"
        );
    }
    let on = starts_on + ends_on;
    let off = (starts - starts_on) + (ends - ends_on);
    Ok(match (on, off) {
        (_, 0) => BlockState::Enabled,
        (0, _) => BlockState::Disabled,
        _ => BlockState::Mixed,
    })
}

const CLUSTER_NEEDS: &str = "cluster mode needs Ant Media Server Enterprise";

pub fn state(xml: &str) -> Result<BlockState> {
    block_state(xml, "cluster", CLUSTER_NEEDS)
}

/// Returns the XML with every block named `name` enabled or disabled.
fn set_block(xml: &str, name: &str, needs: &str, enabled: bool) -> Result<String> {
    block_state(xml, name, needs)?;
    let f = Fence::new(name);
    // Normalise to "off" first, so already-enabled markers are not doubled.
    let off = f.disable(xml);
    let out = if enabled {
        off.replace(&f.start_off, &f.start_on)
            .replace(&f.end_off, &f.end_on)
    } else {
        off
    };
    check_well_formed(&out)?;
    Ok(out)
}

/// Returns the XML with every cluster block enabled or disabled.
pub fn set_cluster(xml: &str, enabled: bool) -> Result<String> {
    set_block(xml, "cluster", CLUSTER_NEEDS, enabled)
}

/// Returns the XML with the `https` connector enabled or disabled.
pub fn set_https(xml: &str, enabled: bool) -> Result<String> {
    set_block(
        xml,
        "https",
        "this AMS version cannot serve HTTPS from jee-container.xml",
        enabled,
    )
}

pub fn check_well_formed(xml: &str) -> Result<()> {
    roxmltree::Document::parse(xml).map(|_| ()).context(
        "the result would not be well-formed XML, so conf/jee-container.xml was left as it was",
    )
}

/// Whether the `https` block is enabled (used by status and the cert step).
pub fn https_enabled(xml: &str) -> bool {
    xml.contains("<!-- https start -->")
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<beans>\n\t<!-- cluster start\n\t<bean id=\"a\"/>\n\tcluster end -->\n\t<list>\n\t\t<!-- cluster start\n\t\t<b/>\n\t\tcluster end --> \n\t</list>\n\t<!-- https start\n\t<c/>\n\thttps end -->\n</beans>\n";

    #[test]
    fn toggles_both_ways_and_is_idempotent() {
        let on = set_cluster(XML, true).unwrap();
        assert_eq!(state(&on).unwrap(), BlockState::Enabled);
        assert!(
            on.contains("\t<!-- cluster start -->\n\t<bean id=\"a\"/>\n\t<!-- cluster end -->\n")
        );
        assert!(
            on.contains("\t\t<!-- cluster end --> \n"),
            "trailing space kept"
        );
        assert!(on.contains("<!-- https start\n"), "https block untouched");
        assert_eq!(set_cluster(&on, true).unwrap(), on);
        let off = set_cluster(&on, false).unwrap();
        assert_eq!(off, XML);
        assert_eq!(set_cluster(&off, false).unwrap(), XML);
    }

    #[test]
    fn refuses_files_without_or_with_broken_markers() {
        assert!(set_cluster("<beans/>", true).is_err());
        let broken = XML.replacen("cluster end -->", "", 1);
        assert!(set_cluster(&broken, true).is_err());
    }

    #[test]
    fn https_block_toggles_alone() {
        let on = set_https(XML, true).unwrap();
        assert!(on.contains("\t<!-- https start -->\n\t<c/>\n\t<!-- https end -->\n"));
        assert!(
            on.contains("<!-- cluster start\n"),
            "cluster blocks untouched"
        );
        assert!(https_enabled(&on));
        assert_eq!(set_https(&on, true).unwrap(), on);
        assert_eq!(set_https(&on, false).unwrap(), XML);
        assert!(set_https("<beans/>", true).is_err());
    }

    #[test]
    fn refuses_results_that_are_not_xml() {
        let bad = XML.replace("<bean id=\"a\"/>", "<bean id=\"a\">");
        // Disabled it is a comment, so fine; enabled it breaks the document.
        assert!(set_cluster(&bad, false).is_ok());
        assert!(set_cluster(&bad, true).is_err());
    }
}
