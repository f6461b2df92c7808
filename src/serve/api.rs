//! The OpenAI completions API as this server speaks it: a request's fields checked one by one
//! (each mistake a 400 that names its field), the responses and stream chunks, and errors in
//! OpenAI's shape, which its client libraries turn into their exceptions.
//!
//! Fields this server does not know are ignored, as OpenAI's clients send extras; the ones that
//! would change what comes back and that it cannot honour (`n`, `best_of`, `echo`, `logprobs`)
//! are refused instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::generate::Sampling;

/// At most this many stop strings, as OpenAI allows.
pub const MAX_STOPS: usize = 4;
/// The longest stop string, in bytes: each is searched for after every token.
pub const MAX_STOP_BYTES: usize = 256;
/// OpenAI's range of temperatures.
pub const MAX_TEMPERATURE: f64 = 2.0;
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// How long a client refused for a full queue is told to wait, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;

/// A checked completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// None: the one model this server has.
    pub model: Option<String>,
    pub prompt: String,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// None: the server picks one.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// With `stream`: a last chunk with the token counts (OpenAI's `stream_options`).
    pub stream_usage: bool,
    /// Go on past the end of a story (an extension, as vLLM names it).
    pub ignore_eos: bool,
}

/// Parses and checks a completion request's body; `max_tokens_limit` bounds `max_tokens`.
pub fn parse_completion(
    body: &[u8],
    max_tokens_limit: usize,
) -> Result<CompletionRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            None,
            format!("the request body is not valid JSON ({e}); send a JSON object"),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object".to_string(),
        ));
    };
    let fields = Fields(fields);
    refuse_unsupported(&fields)?;
    let max_tokens = match fields.integer("max_tokens")? {
        None => DEFAULT_MAX_TOKENS.min(max_tokens_limit),
        Some(n) if n > max_tokens_limit as u64 => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!("max_tokens is {n}, more than this server's limit of {max_tokens_limit}"),
            ));
        }
        Some(n) => n as usize,
    };
    let temperature = fields.number("temperature")?.unwrap_or(1.0);
    if !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!(
                "temperature is {temperature:?}; it must be between 0 and {MAX_TEMPERATURE} (0: always the most likely token)"
            ),
        ));
    }
    let top_p = fields.number("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("top_p is {top_p:?}; it must be more than 0 and at most 1"),
        ));
    }
    let top_k = fields.integer("top_k")?.unwrap_or(0);
    Ok(CompletionRequest {
        model: fields.string("model")?,
        prompt: prompt(&fields)?,
        max_tokens,
        sampling: Sampling {
            temperature,
            top_k: usize::try_from(top_k).unwrap_or(usize::MAX),
            top_p,
        },
        seed: fields.integer("seed")?,
        stop: stop(&fields)?,
        stream: fields.boolean("stream")?.unwrap_or(false),
        stream_usage: match fields.get("stream_options") {
            Some(Value::Object(options)) => options
                .get("include_usage")
                .is_some_and(|v| v.as_bool() == Some(true)),
            None => false,
            Some(_) => return Err(ApiError::wrong_type("stream_options", "an object")),
        },
        ignore_eos: fields.boolean("ignore_eos")?.unwrap_or(false),
    })
}

/// The request's fields; a field given as `null` counts as not given, as OpenAI's API has it.
struct Fields(Map<String, Value>);

impl Fields {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn integer(&self, name: &'static str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(n) => Ok(Some(n)),
                None if value.as_i64().is_some() => Err(ApiError::invalid(
                    Some(name),
                    format!("{name} is {value}; it must be 0 or more"),
                )),
                None => Err(ApiError::wrong_type(name, "a non-negative integer")),
            },
        }
    }

    fn number(&self, name: &'static str) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| ApiError::wrong_type(name, "a number")),
        }
    }

    fn boolean(&self, name: &'static str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_bool()
                .map(Some)
                .ok_or_else(|| ApiError::wrong_type(name, "true or false")),
        }
    }

    fn string(&self, name: &'static str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::wrong_type(name, "a string")),
        }
    }
}

/// `n`, `best_of`, `echo` and `logprobs` ask for what this server cannot give.
fn refuse_unsupported(fields: &Fields) -> Result<(), ApiError> {
    for name in ["n", "best_of"] {
        if let Some(value) = fields.get(name)
            && value.as_u64() != Some(1)
        {
            return Err(ApiError::invalid(
                Some(name),
                format!(
                    "{name} is {value}; this server gives one completion per request, so {name} can only be 1"
                ),
            ));
        }
    }
    if fields.boolean("echo")? == Some(true) {
        return Err(ApiError::invalid(
            Some("echo"),
            "echo is not supported; the prompt is what you sent".to_string(),
        ));
    }
    if fields.get("logprobs").is_some() {
        return Err(ApiError::invalid(
            Some("logprobs"),
            "logprobs is not supported by this server".to_string(),
        ));
    }
    Ok(())
}

/// A string, or a list holding one string; OpenAI's lists of several prompts or of token ids
/// are refused.
fn prompt(fields: &Fields) -> Result<String, ApiError> {
    match fields.get("prompt") {
        None => Err(ApiError::invalid(
            Some("prompt"),
            "prompt is missing; give the story's opening (\"\" starts one from nothing)".to_string(),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => Ok(s.clone()),
            _ => Err(ApiError::invalid(
                Some("prompt"),
                "prompt must be a string (or a list of exactly one string); lists of several prompts or of token ids are not supported".to_string(),
            )),
        },
        Some(_) => Err(ApiError::wrong_type("prompt", "a string")),
    }
}

/// A string, or a list of up to [`MAX_STOPS`] strings, none empty.
fn stop(fields: &Fields) -> Result<Vec<String>, ApiError> {
    let stops = match fields.get("stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::wrong_type("stop", "a string or a list of strings"))?,
        Some(_) => {
            return Err(ApiError::wrong_type(
                "stop",
                "a string or a list of strings",
            ));
        }
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            Some("stop"),
            format!(
                "stop has {} strings; at most {MAX_STOPS} are allowed",
                stops.len()
            ),
        ));
    }
    for stop in &stops {
        if stop.is_empty() || stop.len() > MAX_STOP_BYTES {
            return Err(ApiError::invalid(
                Some("stop"),
                format!(
                    "each stop string must be 1 to {MAX_STOP_BYTES} bytes long; one is {}",
                    stop.len()
                ),
            ));
        }
    }
    Ok(stops)
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A request this server will not answer as it is (400).
    pub fn invalid(param: Option<&'static str>, message: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    fn wrong_type(param: &'static str, expected: &str) -> ApiError {
        ApiError::invalid(Some(param), format!("{param} must be {expected}"))
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The server's own failure (500).
    pub fn server(message: String) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// Every worker busy and the queue full (429, with a Retry-After).
    pub fn busy(message: String) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message,
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    /// The body of the error, also what a stream sends when its completion fails.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<CompletionRequest, ApiError> {
        parse_completion(body.as_bytes(), 1000)
    }

    fn param_of(body: &str) -> Option<&'static str> {
        let err = parse(body).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{err:?}");
        err.param
    }

    #[test]
    fn defaults_are_openai_s() {
        let request = parse(r#"{"prompt": "Once"}"#).unwrap();
        assert_eq!(request.prompt, "Once");
        assert_eq!(request.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(request.sampling.temperature, 1.0);
        assert_eq!(request.sampling.top_p, 1.0);
        assert_eq!(request.sampling.top_k, 0);
        assert_eq!(
            (request.seed, request.stream, request.model),
            (None, false, None)
        );
        assert!(request.stop.is_empty());
    }

    #[test]
    fn fields_are_read_and_nulls_and_unknown_ones_ignored() {
        let request = parse(
            r#"{"model": "m", "prompt": ["Tom"], "max_tokens": 5, "temperature": 0, "top_p": 0.5,
                "top_k": 3, "seed": 7, "stop": "x", "stream": true, "n": 1, "user": "u",
                "presence_penalty": null, "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(request.model.as_deref(), Some("m"));
        assert_eq!(request.prompt, "Tom");
        assert_eq!(request.max_tokens, 5);
        assert_eq!(request.sampling.top_k, 3);
        assert_eq!(request.seed, Some(7));
        assert_eq!(request.stop, ["x"]);
        assert!(request.stream && request.stream_usage);
    }

    #[test]
    fn each_mistake_names_its_field() {
        assert_eq!(
            param_of(r#"{"prompt": "a", "max_tokens": -1}"#),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(r#"{"prompt": "a", "max_tokens": 1001}"#),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(r#"{"prompt": "a", "max_tokens": "5"}"#),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(r#"{"prompt": "a", "temperature": 2.5}"#),
            Some("temperature")
        );
        assert_eq!(param_of(r#"{"prompt": "a", "top_p": 0}"#), Some("top_p"));
        assert_eq!(param_of(r#"{"prompt": 5}"#), Some("prompt"));
        assert_eq!(param_of(r#"{"prompt": ["a", "b"]}"#), Some("prompt"));
        assert_eq!(param_of(r#"{"prompt": [1, 2]}"#), Some("prompt"));
        assert_eq!(param_of(r#"{}"#), Some("prompt"));
        assert_eq!(
            param_of(r#"{"prompt": "a", "stop": ["a","b","c","d","e"]}"#),
            Some("stop")
        );
        assert_eq!(param_of(r#"{"prompt": "a", "stop": [""]}"#), Some("stop"));
        assert_eq!(
            param_of(r#"{"prompt": "a", "stream": "yes"}"#),
            Some("stream")
        );
        assert_eq!(param_of(r#"{"prompt": "a", "n": 2}"#), Some("n"));
        assert_eq!(
            param_of(r#"{"prompt": "a", "best_of": 3}"#),
            Some("best_of")
        );
        assert_eq!(param_of(r#"{"prompt": "a", "echo": true}"#), Some("echo"));
        assert_eq!(
            param_of(r#"{"prompt": "a", "logprobs": 2}"#),
            Some("logprobs")
        );
        assert_eq!(param_of(r#"{"prompt": "a", "seed": -3}"#), Some("seed"));
        assert_eq!(param_of("{\"prompt\": "), None);
        assert_eq!(param_of("[1]"), None);
    }

    #[test]
    fn an_error_has_openai_s_shape() {
        let err = ApiError::invalid(Some("top_p"), "bad".into());
        assert_eq!(
            err.body(),
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "top_p", "code": null}})
        );
    }
}
