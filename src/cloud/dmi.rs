//! The DMI fingerprint: what the hypervisor tells the guest about itself
//! under `/sys/class/dmi/id` (read through the host root, so tests plant
//! it), matched as cloud-init's `ds-identify` matches it. No network.
//!
//! | provider | file | value |
//! | --- | --- | --- |
//! | Azure | `chassis_asset_tag` | `7783-7084-3265-9085-8269-3286-77` |
//! | DigitalOcean | `sys_vendor` | `DigitalOcean` |
//! | EC2 (Nitro) | `sys_vendor` | `Amazon EC2` |
//! | EC2 (Nitro) | `board_asset_tag` | the instance id, `i-…` |
//! | EC2 (Xen) | `/sys/hypervisor/uuid` | starts with `ec2` |
//! | EC2 | `product_uuid` and `product_serial` | both start with `ec2` and are equal (any case) |
//! | GCP | `product_name` | `Google Compute Engine` |
//! | GCP | `product_serial` | starts with `GoogleCloud-` |
//! | OpenStack | `product_name` | `OpenStack Nova`, `OpenStack Compute` |
//! | OpenStack | `chassis_asset_tag` | `OpenStack Nova`, `OpenStack Compute`, `OpenTelekomCloud`, `SAP CCloud VM`, `HUAWEICLOUD` |
//! | Hetzner | `sys_vendor` | `Hetzner` |
//! | Oracle | `chassis_asset_tag` | `OracleCloud.com` |
//!
//! `product_serial` and `product_uuid` are readable by root only (mode
//! 0400): an unprivileged reporter does without them, which is why the
//! world-readable files are tried first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Provider;
use crate::host::Host;
use crate::host::fs::Cap;

pub const DMI_DIR: &str = "/sys/class/dmi/id";
pub const HYPERVISOR_UUID: &str = "/sys/hypervisor/uuid";

/// The DMI files read, in this order.
pub const FIELDS: [&str; 8] = [
    "sys_vendor",
    "product_name",
    "chassis_asset_tag",
    "board_vendor",
    "board_asset_tag",
    "bios_vendor",
    "product_serial",
    "product_uuid",
];

/// A DMI file holds one short line; anything bigger is not DMI.
const DMI_CAP: Cap = Cap {
    bytes: 64 << 10,
    what: "a DMI file",
};

/// What was read: the first line of each file, trimmed (as ds-identify's
/// `read` takes it), and the files that exist but could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dmi {
    pub fields: BTreeMap<&'static str, String>,
    pub hypervisor_uuid: Option<String>,
    /// (file, why) of files present but unreadable (0400 as non-root).
    pub unreadable: Vec<(String, String)>,
}

/// The match: which provider, by which file and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub provider: Provider,
    pub file: String,
    pub value: String,
}

fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().next().unwrap_or("").trim().to_string()
}

fn read_one(host: &Host, path: &Path, unreadable: &mut Vec<(String, String)>) -> Option<String> {
    match host.read_capped(path, DMI_CAP) {
        Ok(Some(bytes)) => Some(first_line(&bytes)),
        Ok(None) => None,
        Err(e) => {
            let why = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
            unreadable.push((path.display().to_string(), why));
            None
        }
    }
}

/// Reads the DMI files under the host root. Never fails: a missing file
/// is no match, an unreadable one is listed in [`Dmi::unreadable`].
pub fn read(host: &Host) -> Dmi {
    let mut d = Dmi::default();
    for f in FIELDS {
        let path = PathBuf::from(DMI_DIR).join(f);
        if let Some(v) = read_one(host, &path, &mut d.unreadable) {
            d.fields.insert(f, v);
        }
    }
    d.hypervisor_uuid = read_one(host, Path::new(HYPERVISOR_UUID), &mut d.unreadable);
    d
}

impl Dmi {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    fn hit(&self, provider: Provider, field: &str) -> Option<Fingerprint> {
        Some(Fingerprint {
            provider,
            file: format!("{DMI_DIR}/{field}"),
            value: self.get(field)?.to_string(),
        })
    }
}

const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";
const OPENSTACK_PRODUCTS: [&str; 2] = ["OpenStack Nova", "OpenStack Compute"];
const OPENSTACK_ASSET_TAGS: [&str; 5] = [
    "OpenStack Nova",
    "OpenStack Compute",
    "OpenTelekomCloud",
    "SAP CCloud VM",
    "HUAWEICLOUD",
];

/// The provider the DMI files name, if any (ds-identify's rules; the
/// table at the top of this module).
pub fn fingerprint(d: &Dmi) -> Option<Fingerprint> {
    let is = |field: &str, want: &str| d.get(field) == Some(want);
    if is("chassis_asset_tag", AZURE_ASSET_TAG) {
        return d.hit(Provider::Azure, "chassis_asset_tag");
    }
    if is("sys_vendor", "DigitalOcean") {
        return d.hit(Provider::DigitalOcean, "sys_vendor");
    }
    if let Some(f) = ec2(d) {
        return Some(f);
    }
    if is("product_name", "Google Compute Engine") {
        return d.hit(Provider::Gcp, "product_name");
    }
    if d.get("product_serial")
        .is_some_and(|s| s.starts_with("GoogleCloud-"))
    {
        return d.hit(Provider::Gcp, "product_serial");
    }
    if d.get("product_name")
        .is_some_and(|p| OPENSTACK_PRODUCTS.contains(&p))
    {
        return d.hit(Provider::OpenStack, "product_name");
    }
    if d.get("chassis_asset_tag")
        .is_some_and(|t| OPENSTACK_ASSET_TAGS.contains(&t))
    {
        return d.hit(Provider::OpenStack, "chassis_asset_tag");
    }
    if is("sys_vendor", "Hetzner") {
        return d.hit(Provider::Hetzner, "sys_vendor");
    }
    if is("chassis_asset_tag", "OracleCloud.com") {
        return d.hit(Provider::Oracle, "chassis_asset_tag");
    }
    None
}

fn ec2(d: &Dmi) -> Option<Fingerprint> {
    if d.get("sys_vendor") == Some("Amazon EC2") {
        return d.hit(Provider::Ec2, "sys_vendor");
    }
    if d.get("board_asset_tag").is_some_and(|t| {
        t.strip_prefix("i-")
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()))
    }) {
        return d.hit(Provider::Ec2, "board_asset_tag");
    }
    if let Some(uuid) = &d.hypervisor_uuid {
        if uuid.starts_with("ec2") {
            return Some(Fingerprint {
                provider: Provider::Ec2,
                file: HYPERVISOR_UUID.into(),
                value: uuid.clone(),
            });
        }
    }
    let (uuid, serial) = (d.get("product_uuid")?, d.get("product_serial")?);
    let ec2 = |s: &str| s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ec2"));
    if ec2(uuid) && ec2(serial) && uuid.eq_ignore_ascii_case(serial) {
        return d.hit(Provider::Ec2, "product_uuid");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(pairs: &[(&'static str, &str)]) -> Dmi {
        Dmi {
            fields: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            ..Dmi::default()
        }
    }

    #[test]
    fn each_rule_of_ds_identify() {
        type Case<'a> = (&'a [(&'static str, &'a str)], Option<Provider>);
        let cases: &[Case] = &[
            (
                &[
                    ("chassis_asset_tag", AZURE_ASSET_TAG),
                    ("sys_vendor", "Microsoft Corporation"),
                ],
                Some(Provider::Azure),
            ),
            // Hyper-V on premises: the same vendor, no Azure asset tag.
            (
                &[
                    ("sys_vendor", "Microsoft Corporation"),
                    ("product_name", "Virtual Machine"),
                ],
                None,
            ),
            (
                &[("sys_vendor", "DigitalOcean"), ("product_name", "Droplet")],
                Some(Provider::DigitalOcean),
            ),
            (
                &[("sys_vendor", "Amazon EC2"), ("product_name", "m5.large")],
                Some(Provider::Ec2),
            ),
            (
                &[("board_asset_tag", "i-0123456789abcdef0")],
                Some(Provider::Ec2),
            ),
            (&[("board_asset_tag", "i-not-hex")], None),
            (
                &[
                    ("product_uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF"),
                    ("product_serial", "ec2e1916-9099-7caf-fd21-012345abcdef"),
                ],
                Some(Provider::Ec2),
            ),
            (
                &[
                    ("product_uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF"),
                    ("product_serial", "ec2-other"),
                ],
                None,
            ),
            (
                &[
                    ("product_name", "Google Compute Engine"),
                    ("sys_vendor", "Google"),
                ],
                Some(Provider::Gcp),
            ),
            (
                &[("product_serial", "GoogleCloud-ABCDEF")],
                Some(Provider::Gcp),
            ),
            (
                &[("product_name", "OpenStack Nova")],
                Some(Provider::OpenStack),
            ),
            (
                &[("product_name", "OpenStack Compute")],
                Some(Provider::OpenStack),
            ),
            (
                &[("chassis_asset_tag", "HUAWEICLOUD")],
                Some(Provider::OpenStack),
            ),
            (
                &[("sys_vendor", "Hetzner"), ("product_name", "vServer")],
                Some(Provider::Hetzner),
            ),
            (
                &[("chassis_asset_tag", "OracleCloud.com")],
                Some(Provider::Oracle),
            ),
            (
                &[
                    ("sys_vendor", "QEMU"),
                    ("product_name", "Standard PC (Q35 + ICH9, 2009)"),
                ],
                None,
            ),
            (&[], None),
        ];
        for (fields, want) in cases {
            let got = fingerprint(&dmi(fields)).map(|f| f.provider);
            assert_eq!(got, *want, "{fields:?}");
        }
        let xen = Dmi {
            hypervisor_uuid: Some("ec2e1916-9099-7caf-fd21-012345abcdef".into()),
            ..Dmi::default()
        };
        let f = fingerprint(&xen).unwrap();
        assert_eq!(
            (f.provider, f.file.as_str()),
            (Provider::Ec2, HYPERVISOR_UUID)
        );
    }
}
