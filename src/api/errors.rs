//! The one mapping from [`Error`] to an HTTP response, for the registry API and the admin
//! API alike: the status, code and header from [`Error::answer`], and the OCI error JSON
//! (`{"errors":[{"code":…,"message":…,"detail":…}]}`).

use super::body::{self, Body};
use crate::error::Error;
use http::{HeaderValue, Response, header};

/// The registry error response for `err` (without a body for `HEAD`).
pub fn response(err: &Error, head: bool) -> Response<Body> {
    let answer = err.answer();
    let json = serde_json::json!({
        "errors": [{ "code": answer.code, "message": err.to_string(), "detail": serde_json::Value::Null }]
    });
    let bytes = serde_json::to_vec(&json).unwrap_or_default();
    let len = bytes.len();
    let mut resp = Response::new(if head {
        body::empty()
    } else {
        body::full(bytes)
    });
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some((name, value)) = answer.header {
        h.insert(name, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn oci_error_json() {
        let resp = response(
            &Error::BlobUnknown("sha256:x is not known in a".into()),
            false,
        );
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("sha256:x")
        );
    }

    #[test]
    fn statuses_and_headers() {
        let r = response(&Error::MethodNotAllowed("no".into()), true);
        assert_eq!(
            (r.status().as_u16(), &r.headers()[header::ALLOW]),
            (405, &HeaderValue::from_static("GET, HEAD"))
        );
        let r = response(&Error::RangeNotSatisfiable { size: 9 }, false);
        assert_eq!(
            (r.status().as_u16(), &r.headers()[header::CONTENT_RANGE]),
            (416, &HeaderValue::from_static("bytes */9"))
        );
        assert_eq!(
            response(&Error::TooManyRequests("x".into()), false).status(),
            429
        );
        assert_eq!(
            response(&Error::NameInvalid("x".into()), false).status(),
            400
        );
    }
}
