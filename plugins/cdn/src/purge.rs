//! The caches purged after the origin switch: Varnish (BAN, PURGE or
//! surrogate keys), Cloudflare, Fastly and CloudFront (SigV4), each request
//! as the provider's API documentation gives it. Credentials come from the
//! target's secrets.

use crate::{Settings, Snapshot, url_path};
use rewind_plugin_sdk::http;
use rewind_plugin_sdk::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Purge {
    /// Varnish: `BAN` (one request; the VCL bans `req.url ~ <header value>`)
    /// or `PURGE` (one request per file of the build).
    Varnish {
        url: String,
        #[serde(default = "default_method")]
        method: String,
        #[serde(default = "default_ban_header")]
        ban_header: String,
        #[serde(default = "default_ban_pattern")]
        ban_pattern: String,
        /// Purge by surrogate key instead: one request per key, the key in
        /// `key_header` (for a VCL banning `obj.http.Surrogate-Key`, or
        /// vmod-xkey's `xkey-purge`).
        #[serde(default)]
        surrogate_keys: Vec<String>,
        #[serde(default = "default_key_header")]
        key_header: String,
    },
    /// Cloudflare's purge_cache: everything, or the build's URLs under
    /// `site_url` when `by_url` is set. Token: secret `CLOUDFLARE_API_TOKEN`.
    Cloudflare {
        zone_id: String,
        #[serde(default)]
        by_url: bool,
        site_url: Option<String>,
        #[serde(default = "default_cloudflare_api")]
        api_url: String,
        #[serde(default = "default_cloudflare_secret")]
        token_secret: String,
    },
    /// Fastly: purge_all, or by surrogate keys. Token: secret `FASTLY_API_TOKEN`.
    Fastly {
        service_id: String,
        #[serde(default)]
        surrogate_keys: Vec<String>,
        #[serde(default)]
        soft: bool,
        #[serde(default = "default_fastly_api")]
        api_url: String,
        #[serde(default = "default_fastly_secret")]
        token_secret: String,
    },
    /// CloudFront's CreateInvalidation, signed with SigV4. Credentials:
    /// secrets `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    Cloudfront {
        distribution_id: String,
        #[serde(default = "default_cloudfront_paths")]
        paths: Vec<String>,
        #[serde(default = "default_cloudfront_api")]
        api_url: String,
        #[serde(default = "default_access_key_secret")]
        access_key_secret: String,
        #[serde(default = "default_secret_key_secret")]
        secret_key_secret: String,
    },
}

fn default_cloudflare_api() -> String {
    "https://api.cloudflare.com/client/v4".into()
}
fn default_cloudflare_secret() -> String {
    "CLOUDFLARE_API_TOKEN".into()
}
fn default_fastly_api() -> String {
    "https://api.fastly.com".into()
}
fn default_fastly_secret() -> String {
    "FASTLY_API_TOKEN".into()
}
fn default_cloudfront_paths() -> Vec<String> {
    vec!["/*".into()]
}
fn default_cloudfront_api() -> String {
    "https://cloudfront.amazonaws.com".into()
}
fn default_access_key_secret() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_secret_key_secret() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

impl Purge {
    pub fn describe(&self) -> String {
        match self {
            Purge::Varnish { url, method, .. } => format!("Varnish at {url} ({method})"),
            Purge::Cloudflare { zone_id, .. } => format!("Cloudflare zone {zone_id}"),
            Purge::Fastly { service_id, .. } => format!("Fastly service {service_id}"),
            Purge::Cloudfront {
                distribution_id, ..
            } => format!("CloudFront distribution {distribution_id}"),
        }
    }
}

fn default_method() -> String {
    "BAN".into()
}
fn default_ban_header() -> String {
    "X-Ban-Url".into()
}
fn default_ban_pattern() -> String {
    "^/".into()
}
fn default_key_header() -> String {
    "Surrogate-Key".into()
}

/// Send a provider's purge request; a clear error unless it was accepted.
fn provider_call(
    provider: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    accepted: &[u16],
) -> Result<http::Response, PluginError> {
    let response = http::send(method, url, headers, body).map_err(|e| {
        PluginError::Unavailable(format!("{provider} cannot be reached for the purge: {e}"))
    })?;
    if !accepted.contains(&response.status) {
        return Err(PluginError::Failed(format!(
            "{provider} refused the purge: {} {}",
            response.status,
            response.text().trim()
        )));
    }
    Ok(response)
}

/// scheme://host[:port] of a URL, and the host[:port] part.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

pub fn purge(
    settings: &Settings,
    snapshot: &Snapshot,
    step_id: &str,
    target: &str,
) -> Result<Vec<String>, PluginError> {
    let mut done = Vec::new();
    for cache in &settings.purge {
        match cache {
            Purge::Cloudflare {
                zone_id,
                by_url,
                site_url,
                api_url,
                token_secret,
            } => {
                let token = secrets::require(target, token_secret)?;
                let body = if *by_url {
                    let site = site_url.as_deref().ok_or_else(|| {
                        PluginError::InvalidSettings(
                            "Cloudflare by_url needs site_url, the public URL of the site".into(),
                        )
                    })?;
                    let files: Vec<String> = snapshot
                        .manifest
                        .keys()
                        .map(|f| format!("{}{}", site.trim_end_matches('/'), url_path(settings, f)))
                        .collect();
                    serde_json::json!({ "files": files })
                } else {
                    serde_json::json!({ "purge_everything": true })
                };
                let authorization = format!("Bearer {token}");
                let response = provider_call(
                    &format!("Cloudflare zone {zone_id}"),
                    "POST",
                    &format!(
                        "{}/zones/{zone_id}/purge_cache",
                        api_url.trim_end_matches('/')
                    ),
                    &[
                        ("authorization", &authorization),
                        ("content-type", "application/json"),
                    ],
                    body.to_string().as_bytes(),
                    &[200],
                )?;
                let answer: serde_json::Value =
                    serde_json::from_slice(&response.body).unwrap_or_default();
                if answer["success"] != true {
                    return Err(PluginError::Failed(format!(
                        "Cloudflare zone {zone_id} did not purge: {}",
                        answer["errors"]
                    )));
                }
                done.push(format!("Cloudflare zone {zone_id}: purge accepted"));
            }
            Purge::Fastly {
                service_id,
                surrogate_keys,
                soft,
                api_url,
                token_secret,
            } => {
                let token = secrets::require(target, token_secret)?;
                let base = api_url.trim_end_matches('/');
                let keys = surrogate_keys.join(" ");
                let mut headers = vec![
                    ("fastly-key", token.as_str()),
                    ("accept", "application/json"),
                ];
                if *soft {
                    headers.push(("fastly-soft-purge", "1"));
                }
                let url = if surrogate_keys.is_empty() {
                    format!("{base}/service/{service_id}/purge_all")
                } else {
                    headers.push(("surrogate-key", keys.as_str()));
                    format!("{base}/service/{service_id}/purge")
                };
                provider_call(
                    &format!("Fastly service {service_id}"),
                    "POST",
                    &url,
                    &headers,
                    &[],
                    &[200],
                )?;
                done.push(format!(
                    "Fastly service {service_id}: {} accepted",
                    if surrogate_keys.is_empty() {
                        "purge_all".to_string()
                    } else {
                        format!("purge of {keys}")
                    }
                ));
            }
            Purge::Cloudfront {
                distribution_id,
                paths,
                api_url,
                access_key_secret,
                secret_key_secret,
            } => {
                let access_key = secrets::require(target, access_key_secret)?;
                let secret_key = secrets::require(target, secret_key_secret)?;
                let items: String = paths
                    .iter()
                    .map(|p| format!("<Path>{}</Path>", xml_escape(p)))
                    .collect();
                // The step id makes a re-delivered step the same invalidation.
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InvalidationBatch xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\"><CallerReference>rewind-{}</CallerReference><Paths><Quantity>{}</Quantity><Items>{items}</Items></Paths></InvalidationBatch>",
                    xml_escape(step_id),
                    paths.len()
                );
                let path = format!("/2020-05-31/distribution/{distribution_id}/invalidation");
                let host = authority(api_url).to_string();
                let signer = sigv4::Signer {
                    access_key: &access_key,
                    secret_key: &secret_key,
                    region: "us-east-1",
                    service: "cloudfront",
                };
                let signed = signer.sign(
                    "POST",
                    &sigv4::uri_encode(&path, true),
                    "",
                    &[("host", &host)],
                    body.as_bytes(),
                    &sigv4::amz_date(now_secs()),
                );
                let headers: Vec<(&str, &str)> = signed
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                provider_call(
                    &format!("CloudFront distribution {distribution_id}"),
                    "POST",
                    &format!("{}{path}", api_url.trim_end_matches('/')),
                    &headers,
                    body.as_bytes(),
                    &[201],
                )?;
                done.push(format!(
                    "CloudFront distribution {distribution_id}: invalidation of {} created",
                    paths.join(", ")
                ));
            }
            Purge::Varnish {
                url,
                method,
                ban_header,
                ban_pattern,
                surrogate_keys,
                key_header,
            } => {
                let base = url.trim_end_matches('/');
                let requests = varnish_requests(
                    settings,
                    snapshot,
                    base,
                    method,
                    (ban_header, ban_pattern),
                    (surrogate_keys, key_header),
                )?;
                for (target, headers) in &requests {
                    let headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let response = http::send(method, target, &headers, &[]).map_err(|e| {
                        PluginError::Unavailable(format!(
                            "Varnish at {base} cannot be reached for the purge: {e}"
                        ))
                    })?;
                    if !(200..300).contains(&response.status) {
                        return Err(PluginError::Failed(format!(
                            "Varnish at {base} refused the {method} of {target}: {} {}; the \
                             origin already serves build {}, but the cache may still serve the \
                             other build until it expires",
                            response.status,
                            response.text().trim(),
                            snapshot.build
                        )));
                    }
                }
                done.push(format!(
                    "Varnish at {base}: {} {method} request(s) accepted",
                    requests.len()
                ));
            }
        }
    }
    Ok(done)
}

/// A purge request to send: URL and headers.
type PurgeRequest = (String, Vec<(String, String)>);

/// The requests that purge a Varnish: one per surrogate
/// key when keys are set, else one BAN, or one PURGE per file.
fn varnish_requests(
    settings: &Settings,
    snapshot: &Snapshot,
    base: &str,
    method: &str,
    (ban_header, ban_pattern): (&String, &String),
    (surrogate_keys, key_header): (&[String], &String),
) -> Result<Vec<PurgeRequest>, PluginError> {
    let method = method.to_ascii_uppercase();
    if method != "BAN" && method != "PURGE" {
        return Err(PluginError::InvalidSettings(format!(
            "purge method {method} for Varnish at {base}: use BAN or PURGE"
        )));
    }
    if !surrogate_keys.is_empty() {
        return Ok(surrogate_keys
            .iter()
            .map(|key| (format!("{base}/"), vec![(key_header.clone(), key.clone())]))
            .collect());
    }
    if method == "BAN" {
        return Ok(vec![(
            format!("{base}/"),
            vec![(ban_header.clone(), ban_pattern.clone())],
        )]);
    }
    let mut paths: Vec<String> = snapshot
        .manifest
        .keys()
        .map(|f| url_path(settings, f))
        .collect();
    paths.push(format!("/{}", settings.index));
    paths.sort();
    paths.dedup();
    Ok(paths
        .into_iter()
        .map(|p| (format!("{base}{p}"), Vec::new()))
        .collect())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
