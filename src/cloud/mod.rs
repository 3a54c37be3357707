//! Cloud APIs the agent calls: [`aws`] (SSM Parameter Store and Auto
//! Scaling lifecycle hooks with the instance role, signed with SigV4).

pub mod aws;
