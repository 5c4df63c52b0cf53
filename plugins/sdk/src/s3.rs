//! A small S3 client over `wasi:http`, signed with SigV4: list, get, copy
//! and delete objects of an S3-compatible store (AWS S3, MinIO, Ceph RGW,
//! Garage, ...). The store's host must be on the target's http allow-list.

use crate::http::{self, Response};
use crate::sigv4;
use crate::{PluginError, now_secs};
use serde::Deserialize;

/// Where the store is and how to sign for it.
pub struct Client {
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`, ...
    pub endpoint: String,
    pub region: String,
    /// Path-style URLs (`endpoint/bucket/key`) rather than virtual-hosted
    /// ones (`bucket.host/key`); most self-hosted stores need path style.
    pub path_style: bool,
    pub access_key: String,
    pub secret_key: String,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    /// As the store gives it, quotes removed; some stores leave it out.
    pub etag: Option<String>,
}

/// A listing: objects, and with a delimiter the common prefixes.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    pub objects: Vec<Object>,
    pub prefixes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    #[serde(default)]
    size: u64,
    #[serde(rename = "ETag")]
    etag: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommonPrefix {
    prefix: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

/// `s3://bucket/key`, for messages.
pub fn display(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

impl Client {
    fn scheme_and_host(&self) -> (&str, &str) {
        let (scheme, rest) = self
            .endpoint
            .split_once("://")
            .unwrap_or(("https", self.endpoint.as_str()));
        (scheme, rest.trim_end_matches('/'))
    }

    /// (URL without query, host to sign, encoded path to sign).
    fn locate(&self, bucket: &str, key: &str) -> (String, String, String) {
        let (scheme, host) = self.scheme_and_host();
        let encoded_key = sigv4::uri_encode(key, true);
        if self.path_style {
            let path = format!("/{bucket}/{encoded_key}");
            (format!("{scheme}://{host}{path}"), host.to_string(), path)
        } else {
            let host = format!("{bucket}.{host}");
            let path = format!("/{encoded_key}");
            (format!("{scheme}://{host}{path}"), host, path)
        }
    }

    /// Send a signed request; the response whatever its status.
    pub fn request(
        &self,
        method: &str,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, PluginError> {
        let (url, host, path) = self.locate(bucket, key);
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (sigv4::uri_encode(k, false), sigv4::uri_encode(v, false)))
            .collect();
        pairs.sort();
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut to_sign: Vec<(&str, &str)> = vec![("host", &host)];
        to_sign.extend(headers.iter().copied());
        let signer = sigv4::Signer {
            access_key: &self.access_key,
            secret_key: &self.secret_key,
            region: &self.region,
            service: "s3",
        };
        let signed = signer.sign(
            method,
            &path,
            &query,
            &to_sign,
            body,
            &sigv4::amz_date(now_secs()),
        );
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let url = if query.is_empty() {
            url
        } else {
            format!("{url}?{query}")
        };
        http::send(method, &url, &all, body).map_err(|e| match e {
            http::HttpError::Failed(text) => {
                PluginError::Unavailable(format!("the S3 store cannot be reached: {text}"))
            }
            other => other.into(),
        })
    }

    /// A clear error from a refused request: the store's code and message.
    fn refused(what: &str, response: &Response) -> PluginError {
        let error: ErrorBody = quick_xml::de::from_str(&response.text()).unwrap_or_default();
        let reason = if error.code.is_empty() {
            response.text().trim().chars().take(200).collect::<String>()
        } else {
            format!("{}: {}", error.code, error.message)
        };
        let text = format!("{what}: the store answered {} {reason}", response.status);
        match (response.status, error.code.as_str()) {
            (404, _) => PluginError::NotFound(text),
            (403, _) | (_, "AccessDenied" | "SignatureDoesNotMatch" | "InvalidAccessKeyId") => {
                PluginError::Denied(text)
            }
            (500..=599, _) => PluginError::Unavailable(text),
            _ => PluginError::Failed(text),
        }
    }

    /// Every object under `prefix` (all pages). With a delimiter, the keys
    /// one level down are grouped into `prefixes`.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<Listing, PluginError> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(d) = delimiter {
                query.push(("delimiter", d));
            }
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            let what = format!("listing {}", display(bucket, prefix));
            let response = self.request("GET", bucket, "", &query, &[], &[])?;
            if response.status != 200 {
                return Err(Self::refused(&what, &response));
            }
            let page: ListBucketResult = quick_xml::de::from_str(&response.text())
                .map_err(|e| PluginError::Failed(format!("{what}: unreadable answer: {e}")))?;
            listing
                .objects
                .extend(page.contents.into_iter().map(|c| Object {
                    key: c.key,
                    size: c.size,
                    etag: c.etag.as_deref().map(unquote).filter(|e| !e.is_empty()),
                }));
            listing
                .prefixes
                .extend(page.common_prefixes.into_iter().map(|p| p.prefix));
            match page.next_continuation_token {
                Some(next) if page.is_truncated => token = Some(next),
                _ if page.is_truncated => {
                    return Err(PluginError::Failed(format!(
                        "{what}: the store said the listing goes on but gave no continuation token"
                    )));
                }
                _ => break,
            }
        }
        Ok(listing)
    }

    /// An object's bytes and ETag.
    pub fn get(&self, bucket: &str, key: &str) -> Result<(Vec<u8>, Option<String>), PluginError> {
        let response = self.request("GET", bucket, key, &[], &[], &[])?;
        if response.status != 200 {
            return Err(Self::refused(
                &format!("reading {}", display(bucket, key)),
                &response,
            ));
        }
        let etag = response.header("etag").map(|e| unquote(&e));
        Ok((response.body, etag))
    }

    /// Server-side copy. With `if_match`, the store copies only when the
    /// source still has that ETag (the object that was checked).
    pub fn copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
        if_match: Option<&str>,
    ) -> Result<(), PluginError> {
        let source = format!("/{from_bucket}/{}", sigv4::uri_encode(from_key, true));
        let quoted = if_match.map(|e| format!("\"{e}\""));
        let mut headers = vec![("x-amz-copy-source", source.as_str())];
        if let Some(etag) = &quoted {
            headers.push(("x-amz-copy-source-if-match", etag.as_str()));
        }
        let what = format!(
            "copying {} to {}",
            display(from_bucket, from_key),
            display(to_bucket, to_key)
        );
        let response = self.request("PUT", to_bucket, to_key, &[], &headers, &[])?;
        // A copy can fail after a 200 status: the error is then in the body.
        if response.status != 200 || response.text().contains("<Error>") {
            if response.status == 412 {
                return Err(PluginError::Conflict(format!(
                    "{what}: the source changed since it was checked"
                )));
            }
            return Err(Self::refused(&what, &response));
        }
        Ok(())
    }

    /// Delete an object (deleting one that is not there is not an error).
    pub fn delete(&self, bucket: &str, key: &str) -> Result<(), PluginError> {
        // Some stores want a length on every request that may have a body.
        let response = self.request("DELETE", bucket, key, &[], &[("content-length", "0")], &[])?;
        if !matches!(response.status, 200 | 204 | 404) {
            return Err(Self::refused(
                &format!("deleting {}", display(bucket, key)),
                &response,
            ));
        }
        Ok(())
    }
}
