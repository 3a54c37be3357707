//! `conf/jee-container.xml` holds blocks fenced by marker comments. Disabled:
//! `<!-- cluster start … cluster end -->` (one big comment). Enabled:
//! `<!-- cluster start -->` … `<!-- cluster end -->` (live XML between two
//! small comments). This toggles them exactly like `change_server_mode.sh`,
//! but idempotently, and checks that the result is well-formed XML.

use anyhow::{Context, Result, bail};

const START_OFF: &str = "<!-- cluster start";
const START_ON: &str = "<!-- cluster start -->";
const END_OFF: &str = "cluster end -->";
const END_ON: &str = "<!-- cluster end -->";

/// How the cluster blocks of a jee-container.xml stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    Enabled,
    Disabled,
    Mixed,
}

struct Markers {
    starts_on: usize,
    starts_off: usize,
    ends_on: usize,
    ends_off: usize,
}

fn count(xml: &str) -> Markers {
    let starts_all = xml.matches(START_OFF).count();
    let starts_on = xml.matches(START_ON).count();
    let ends_all = xml.matches(END_OFF).count();
    let ends_on = xml.matches(END_ON).count();
    Markers {
        starts_on,
        starts_off: starts_all - starts_on,
        ends_on,
        ends_off: ends_all - ends_on,
    }
}

pub fn state(xml: &str) -> Result<BlockState> {
    let m = count(xml);
    let starts = m.starts_on + m.starts_off;
    let ends = m.ends_on + m.ends_off;
    if starts == 0 {
        bail!(
            "conf/jee-container.xml has no cluster blocks (markers `{START_OFF}` … `{END_OFF}`); cluster mode needs Ant Media Server Enterprise"
        );
    }
    if starts != ends {
        bail!(
            "conf/jee-container.xml has {starts} cluster start markers but {ends} end markers; it was edited by hand, fix it or restore it from {}",
            "the AMS package"
        );
    }
    Ok(match (m.starts_on + m.ends_on, m.starts_off + m.ends_off) {
        (_, 0) => BlockState::Enabled,
        (0, _) => BlockState::Disabled,
        _ => BlockState::Mixed,
    })
}

/// Returns the XML with every cluster block enabled or disabled.
pub fn set_cluster(xml: &str, enabled: bool) -> Result<String> {
    state(xml)?;
    let out = if enabled {
        // Normalise to "off" first, so already-enabled markers are not doubled.
        disable(xml)
            .replace(START_OFF, START_ON)
            .replace(END_OFF, END_ON)
    } else {
        disable(xml)
    };
    check_well_formed(&out)?;
    Ok(out)
}

fn disable(xml: &str) -> String {
    xml.replace(START_ON, START_OFF).replace(END_ON, END_OFF)
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
    fn refuses_results_that_are_not_xml() {
        let bad = XML.replace("<bean id=\"a\"/>", "<bean id=\"a\">");
        // Disabled it is a comment, so fine; enabled it breaks the document.
        assert!(set_cluster(&bad, false).is_ok());
        assert!(set_cluster(&bad, true).is_err());
    }
}
