//! AWS API calls with the instance role, without the aws CLI: the role's
//! credentials from the instance metadata (`iam/security-credentials/<role>`,
//! fetched again before they expire), the region from the identity
//! document, every request signed with SigV4 by `aws-sigv4` (AWS's own
//! signer, the one the SDK uses) and sent with the agent's HTTP client.
//!
//! The calls: SSM `GetParameter` (`join --mongo-password-ssm`), and Auto
//! Scaling `DescribeAutoScalingInstances`, `DescribeLifecycleHooks`,
//! `RecordLifecycleActionHeartbeat` and `CompleteLifecycleAction` (the drain
//! of a scale-in). `AMS_AGENT_AWS_ENDPOINT` sends every service to one URL
//! (tests: moto on loopback).
//!
//! Secrets (the secret key, the session token, a parameter's value) are
//! [`Secret`]s: never in a message or a log line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde_json::Value;

use crate::cloud::ec2::Imds;
use crate::secret::Secret;

/// Sends every AWS service to this URL instead of
/// `https://<service>.<region>.amazonaws.com/` (tests point it at moto).
pub const ENDPOINT_ENV: &str = "AMS_AGENT_AWS_ENDPOINT";
/// The Auto Scaling API version of the Query protocol.
const AUTOSCALING_VERSION: &str = "2011-01-01";
/// Credentials are fetched again when fewer than this is left of them (the
/// metadata service offers new ones at least 5 minutes before expiry).
const REFRESH_BEFORE: Duration = Duration::from_secs(10 * 60);
/// The largest answer read from an AWS API.
const MAX_BODY: usize = 1 << 20;

/// What a caller branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The role may not do this (IAM policy): `AccessDenied`.
    Denied,
    /// The thing asked for does not exist (`ParameterNotFound`, no active
    /// lifecycle action).
    NotFound,
    /// No usable credentials: no role, a bad signature, a refused token.
    Credentials,
    /// Throttled or unavailable: worth another try later.
    Transient,
    /// Anything else (a bad request).
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AwsError {
    pub kind: ErrorKind,
    /// AWS's error code, when it sent one (`AccessDenied`, ...).
    pub code: Option<String>,
    pub message: String,
}

impl AwsError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AwsError {
            kind,
            code: None,
            message: message.into(),
        }
    }

    pub fn transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// The instance role's temporary credentials.
#[derive(Clone)]
struct RoleCredentials {
    role: String,
    access_key_id: String,
    secret: Secret,
    token: Secret,
    expiration: SystemTime,
}

/// A lifecycle hook of an Auto Scaling group (`DescribeLifecycleHooks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleHook {
    pub name: String,
    /// `autoscaling:EC2_INSTANCE_TERMINATING` for scale-in.
    pub transition: String,
    /// How long the instance waits without a heartbeat.
    pub heartbeat_timeout: Option<Duration>,
    /// `CONTINUE` or `ABANDON`, applied when the timeout runs out.
    pub default_result: Option<String>,
    /// The longest the instance may be kept waiting, heartbeats included.
    pub global_timeout: Option<Duration>,
}

pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

/// AWS with the instance role.
pub struct Aws {
    imds: Arc<Imds>,
    http: reqwest::Client,
    region: String,
    endpoint: Option<String>,
    creds: Mutex<Option<RoleCredentials>>,
}

fn valid_name(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c))
}

/// An SSM parameter name (`/ams/mongo-password`, `name`) or its ARN.
pub fn valid_parameter_name(s: &str) -> bool {
    let name = match s.strip_prefix("arn:") {
        Some(rest) => match rest.split_once(":parameter") {
            Some((_, n)) if !n.is_empty() => n,
            _ => return false,
        },
        None => s,
    };
    !name.is_empty()
        && s.len() <= 2048
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
        && s.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

/// The endpoint override from `AMS_AGENT_AWS_ENDPOINT`, if set.
pub fn endpoint_from_env() -> Option<String> {
    std::env::var(ENDPOINT_ENV).ok().filter(|e| !e.is_empty())
}

impl Aws {
    /// Reads the region from the identity document. `endpoint`: every
    /// service at this URL (else AWS's regional endpoints).
    pub async fn new(imds: Arc<Imds>, endpoint: Option<String>) -> Result<Aws, AwsError> {
        let doc = imds
            .get_dynamic("instance-identity/document")
            .await
            .map_err(|e| {
                AwsError::new(
                    ErrorKind::Transient,
                    format!("reading the instance identity document: {e:#}"),
                )
            })?
            .ok_or_else(|| {
                AwsError::new(
                    ErrorKind::Credentials,
                    "the metadata service has no instance identity document (not on EC2?)",
                )
            })?;
        let region = serde_json::from_str::<Value>(&doc)
            .ok()
            .and_then(|v| v["region"].as_str().map(str::to_string))
            .filter(|r| valid_name(r, 32, &[]))
            .ok_or_else(|| {
                AwsError::new(
                    ErrorKind::Other,
                    "the instance identity document names no valid region",
                )
            })?;
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(AwsError::new(
                    ErrorKind::Other,
                    format!("{ENDPOINT_ENV} `{e}` is not an http:// or https:// URL"),
                ));
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            // A redirect would carry x-amz-security-token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                AwsError::new(ErrorKind::Other, format!("building the HTTP client: {e}"))
            })?;
        Ok(Aws {
            imds,
            http,
            region,
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string() + "/"),
            creds: Mutex::new(None),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The role's credentials: the cached ones while more than
    /// [`REFRESH_BEFORE`] is left, else fresh ones from the metadata.
    async fn credentials(&self, force: bool) -> Result<RoleCredentials, AwsError> {
        if !force {
            if let Some(c) = self.creds.lock().expect("credentials lock").as_ref() {
                let left = c
                    .expiration
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                if left > REFRESH_BEFORE {
                    return Ok(c.clone());
                }
            }
        }
        let unavailable = |e: anyhow::Error| {
            AwsError::new(
                ErrorKind::Transient,
                format!("reading the instance role's credentials: {e:#}"),
            )
        };
        let list = self
            .imds
            .get("iam/security-credentials/")
            .await
            .map_err(unavailable)?
            .unwrap_or_default();
        let Some(role) = list.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err(AwsError::new(
                ErrorKind::Credentials,
                "this instance has no IAM role (attach an instance profile)",
            ));
        };
        if !valid_name(role, 128, &['+', '=', ',', '.', '@', '_']) {
            return Err(AwsError::new(
                ErrorKind::Credentials,
                "the metadata service names an invalid IAM role",
            ));
        }
        let doc = self
            .imds
            .get(&format!("iam/security-credentials/{role}"))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                AwsError::new(
                    ErrorKind::Credentials,
                    format!("the metadata service has no credentials for the role {role}"),
                )
            })?;
        let v: Value = serde_json::from_str(&doc).map_err(|_| {
            AwsError::new(
                ErrorKind::Credentials,
                format!("the credentials of the role {role} are not JSON"),
            )
        })?;
        let field = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(code) = field("Code").filter(|c| c != "Success") {
            return Err(AwsError::new(
                ErrorKind::Credentials,
                format!(
                    "the metadata service could not give the role {role}'s credentials ({})",
                    crate::human::escape(&code)
                ),
            ));
        }
        let (Some(access_key_id), Some(secret), Some(token)) = (
            field("AccessKeyId"),
            field("SecretAccessKey"),
            field("Token"),
        ) else {
            return Err(AwsError::new(
                ErrorKind::Credentials,
                format!(
                    "the credentials of the role {role} lack AccessKeyId, SecretAccessKey or Token"
                ),
            ));
        };
        let expiration = field("Expiration")
            .and_then(|e| humantime::parse_rfc3339_weak(&e).ok())
            .unwrap_or_else(|| SystemTime::now() + REFRESH_BEFORE);
        let c = RoleCredentials {
            role: role.to_string(),
            access_key_id,
            secret: Secret::new(secret),
            token: Secret::new(token),
            expiration,
        };
        tracing::debug!(
            "credentials of the instance role {} until {}",
            c.role,
            humantime::format_rfc3339_seconds(c.expiration)
        );
        *self.creds.lock().expect("credentials lock") = Some(c.clone());
        Ok(c)
    }

    fn url(&self, service: &str) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://{service}.{}.amazonaws.com/", self.region),
        }
    }

    /// One signed `POST /`: the answer's body on HTTP 2xx, else the error
    /// AWS sent. Expired credentials are fetched again once.
    async fn post(
        &self,
        service: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<u8>, AwsError> {
        let mut force = false;
        loop {
            let creds = self.credentials(force).await?;
            match self.post_with(&creds, service, headers, body).await {
                Err(e) if e.kind == ErrorKind::Credentials && !force => {
                    // Rotated early, or revoked: one more try with fresh ones.
                    tracing::debug!("AWS refused the credentials ({e}); fetching fresh ones");
                    force = true;
                }
                r => return r,
            }
        }
    }

    async fn post_with(
        &self,
        creds: &RoleCredentials,
        service: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<u8>, AwsError> {
        let url = self.url(service);
        let host = url
            .split_once("://")
            .map(|(_, r)| r.split('/').next().unwrap_or(""))
            .unwrap_or("")
            .to_string();
        let mut all: Vec<(&str, &str)> = vec![("host", host.as_str())];
        all.extend_from_slice(headers);
        let identity: aws_smithy_runtime_api::client::identity::Identity =
            aws_credential_types::Credentials::new(
                creds.access_key_id.clone(),
                creds.secret.expose().to_string(),
                Some(creds.token.expose().to_string()),
                Some(creds.expiration),
                "instance-metadata",
            )
            .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| AwsError::new(ErrorKind::Other, format!("signing: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            all.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| AwsError::new(ErrorKind::Other, format!("signing: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| AwsError::new(ErrorKind::Other, format!("signing: {e}")))?
            .into_parts();
        let mut req = self.http.post(&url).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        for h in instructions.into_parts().0 {
            req = req.header(h.name(), h.value());
        }
        let what = format!("{service} at {url}");
        let resp = req.send().await.map_err(|e| {
            AwsError::new(ErrorKind::Transient, format!("{what}: {}", error_chain(&e)))
        })?;
        let status = resp.status().as_u16();
        let bytes = read_capped(resp).await.map_err(|e| {
            AwsError::new(
                ErrorKind::Transient,
                format!("{what}: reading the answer: {e}"),
            )
        })?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        Err(error_from(status, &bytes, &what))
    }

    /// SSM `GetParameter` with `WithDecryption` (a SecureString's value).
    pub async fn ssm_parameter(&self, name: &str) -> Result<Secret, AwsError> {
        let body = serde_json::json!({ "Name": name, "WithDecryption": true }).to_string();
        let answer = self
            .post(
                "ssm",
                &[
                    ("content-type", "application/x-amz-json-1.1"),
                    ("x-amz-target", "AmazonSSM.GetParameter"),
                ],
                body.as_bytes(),
            )
            .await?;
        let v: Value = serde_json::from_slice(&answer).map_err(|_| {
            AwsError::new(ErrorKind::Other, "SSM's answer to GetParameter is not JSON")
        })?;
        v["Parameter"]["Value"]
            .as_str()
            .map(Secret::new)
            .ok_or_else(|| AwsError::new(ErrorKind::Other, "SSM's answer has no Parameter.Value"))
    }

    async fn autoscaling(&self, action: &str, params: &[(&str, &str)]) -> Result<String, AwsError> {
        let mut body = format!("Action={action}&Version={AUTOSCALING_VERSION}");
        for (k, v) in params {
            body.push('&');
            body.push_str(&form_encode(k));
            body.push('=');
            body.push_str(&form_encode(v));
        }
        let answer = self
            .post(
                "autoscaling",
                &[(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )],
                body.as_bytes(),
            )
            .await?;
        String::from_utf8(answer).map_err(|_| {
            AwsError::new(
                ErrorKind::Other,
                format!("Auto Scaling's answer to {action} is not UTF-8"),
            )
        })
    }

    /// The Auto Scaling group of `instance` (None: in no group).
    pub async fn autoscaling_group_of(&self, instance: &str) -> Result<Option<String>, AwsError> {
        let xml = self
            .autoscaling(
                "DescribeAutoScalingInstances",
                &[("InstanceIds.member.1", instance)],
            )
            .await?;
        Ok(xml_members(&xml, "AutoScalingInstances")
            .into_iter()
            .find_map(|m| m.get("AutoScalingGroupName").cloned()))
    }

    /// The lifecycle hooks of `group`.
    pub async fn lifecycle_hooks(&self, group: &str) -> Result<Vec<LifecycleHook>, AwsError> {
        let xml = self
            .autoscaling("DescribeLifecycleHooks", &[("AutoScalingGroupName", group)])
            .await?;
        let secs = |v: Option<&String>| {
            v.and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs)
        };
        Ok(xml_members(&xml, "LifecycleHooks")
            .into_iter()
            .filter_map(|m| {
                Some(LifecycleHook {
                    name: m.get("LifecycleHookName")?.clone(),
                    transition: m.get("LifecycleTransition").cloned().unwrap_or_default(),
                    heartbeat_timeout: secs(m.get("HeartbeatTimeout")),
                    default_result: m.get("DefaultResult").cloned(),
                    global_timeout: secs(m.get("GlobalTimeout")),
                })
            })
            .collect())
    }

    /// `RecordLifecycleActionHeartbeat`: the hook's timeout starts again.
    pub async fn lifecycle_heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance: &str,
    ) -> Result<(), AwsError> {
        self.autoscaling(
            "RecordLifecycleActionHeartbeat",
            &[
                ("AutoScalingGroupName", group),
                ("LifecycleHookName", hook),
                ("InstanceId", instance),
            ],
        )
        .await
        .map(|_| ())
    }

    /// `CompleteLifecycleAction` with `result` (`CONTINUE`).
    pub async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance: &str,
        result: &str,
    ) -> Result<(), AwsError> {
        self.autoscaling(
            "CompleteLifecycleAction",
            &[
                ("AutoScalingGroupName", group),
                ("LifecycleHookName", hook),
                ("InstanceId", instance),
                ("LifecycleActionResult", result),
            ],
        )
        .await
        .map(|_| ())
    }
}

/// An error and its causes, joined (reqwest's own Display says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// `application/x-www-form-urlencoded`, as AWS's Query protocol reads it.
fn form_encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, SET).to_string()
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(format!("the answer is larger than {MAX_BODY} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The text of the first element named `name` (any namespace).
fn xml_text(doc: &roxmltree::Document, name: &str) -> Option<String> {
    doc.descendants()
        .find(|n| n.tag_name().name() == name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
}

/// The `member` elements under the first `list` element, each as its
/// child elements' names and texts.
fn xml_members(xml: &str, list: &str) -> Vec<std::collections::HashMap<String, String>> {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return Vec::new();
    };
    let Some(list) = doc.descendants().find(|n| n.tag_name().name() == list) else {
        return Vec::new();
    };
    list.children()
        .filter(|n| n.tag_name().name() == "member")
        .map(|m| {
            m.children()
                .filter(|c| c.is_element())
                .filter_map(|c| {
                    Some((
                        c.tag_name().name().to_string(),
                        c.text()?.trim().to_string(),
                    ))
                })
                .collect()
        })
        .collect()
}

/// AWS's error answer (JSON `__type`/`message` or XML `Code`/`Message`)
/// as an [`AwsError`]; the message is escaped and bounded.
fn error_from(status: u16, body: &[u8], what: &str) -> AwsError {
    let text = String::from_utf8_lossy(body);
    let (code, message) = if let Ok(v) = serde_json::from_str::<Value>(&text) {
        let code = v["__type"]
            .as_str()
            .or(v["code"].as_str())
            .map(|c| c.rsplit('#').next().unwrap_or(c).to_string());
        let message = v["message"]
            .as_str()
            .or(v["Message"].as_str())
            .map(str::to_string);
        (code, message)
    } else if let Ok(doc) = roxmltree::Document::parse(&text) {
        (xml_text(&doc, "Code"), xml_text(&doc, "Message"))
    } else {
        (None, None)
    };
    let kind = match (status, code.as_deref()) {
        (_, Some("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation")) => {
            ErrorKind::Denied
        }
        (
            _,
            Some(
                "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "SignatureDoesNotMatch"
                | "IncompleteSignature"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "InvalidToken"
                | "MissingAuthenticationToken",
            ),
        ) => ErrorKind::Credentials,
        (_, Some("ParameterNotFound" | "ParameterVersionNotFound")) => ErrorKind::NotFound,
        (_, Some("ValidationError"))
            if message
                .as_deref()
                .is_some_and(|m| m.contains("No active Lifecycle Action")) =>
        {
            ErrorKind::NotFound
        }
        (
            _,
            Some(
                "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "ServiceUnavailable"
                | "InternalFailure"
                | "InternalError",
            ),
        ) => ErrorKind::Transient,
        (429, _) | (500..=599, _) => ErrorKind::Transient,
        (401 | 403, None) => ErrorKind::Credentials,
        _ => ErrorKind::Other,
    };
    let mut shown: String = message.unwrap_or_default().chars().take(300).collect();
    shown = crate::human::escape(&shown).into_owned();
    AwsError {
        kind,
        message: format!(
            "{what} answered HTTP {status}{}{}",
            code.as_deref()
                .map(|c| format!(" {}", crate::human::escape(c)))
                .unwrap_or_default(),
            if shown.is_empty() {
                String::new()
            } else {
                format!(": {shown}")
            }
        ),
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_both_protocols_are_read_and_sorted() {
        let xml = br#"<ErrorResponse xmlns="https://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: x is not authorized</Message></Error></ErrorResponse>"#;
        let e = error_from(403, xml, "autoscaling");
        assert_eq!(e.kind, ErrorKind::Denied);
        assert!(e.message.contains("AccessDenied: User: x"), "{e}");
        let json = br#"{"__type":"com.amazonaws#ParameterNotFound","message":"nope"}"#;
        assert_eq!(error_from(400, json, "ssm").kind, ErrorKind::NotFound);
        let e = error_from(
            400,
            b"<ErrorResponse><Error><Code>ValidationError</Code><Message>No active Lifecycle Action found with instance ID i-1</Message></Error></ErrorResponse>",
            "autoscaling",
        );
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(error_from(503, b"", "ssm").kind, ErrorKind::Transient);
        let e = error_from(400, b"{\"__type\":\"X\",\"message\":\"a\\nb\"}", "ssm");
        assert!(!e.message.contains('\n'), "{e}");
    }

    #[test]
    fn query_members_are_read() {
        let xml = "<DescribeLifecycleHooksResponse><DescribeLifecycleHooksResult><LifecycleHooks><member><LifecycleHookName>drain</LifecycleHookName><LifecycleTransition>autoscaling:EC2_INSTANCE_TERMINATING</LifecycleTransition><HeartbeatTimeout>300</HeartbeatTimeout></member></LifecycleHooks></DescribeLifecycleHooksResult></DescribeLifecycleHooksResponse>";
        let m = xml_members(xml, "LifecycleHooks");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["HeartbeatTimeout"], "300");
        assert_eq!(form_encode("a b/c=d"), "a%20b%2Fc%3Dd");
    }
}
