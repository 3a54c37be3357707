//! The cloud this host runs in: which provider (detected as cloud-init's
//! `ds-identify` does, without network first), and what its instance
//! metadata says.

pub mod ec2;
