//! RocketMQ application status codes (`apache.rocketmq.v2.Status`) and the mapping
//! from backend errors. Errors travel inside responses with gRPC status OK, as the
//! official clients expect; a gRPC error is only used when no response fits.

use v2::Code;
use wasmq_proto::apache::rocketmq::v2;

use super::backend::BackendError;

/// Longest status message we send (client logs, not a data channel).
const STATUS_MESSAGE_BYTES_MAX: usize = 1024;

pub fn ok() -> v2::Status {
    v2::Status { code: Code::Ok as i32, message: "OK".to_string() }
}

pub fn status(code: Code, message: impl Into<String>) -> v2::Status {
    let mut message = message.into();
    if message.len() > STATUS_MESSAGE_BYTES_MAX {
        let mut cut = STATUS_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    v2::Status { code: code as i32, message }
}

pub fn is_ok(s: &v2::Status) -> bool {
    s.code == Code::Ok as i32
}

/// Overall status of a batch: OK if all OK, the failure if all failed alike,
/// MULTIPLE_RESULTS otherwise (the per-entry statuses tell which).
pub fn combine(statuses: impl Iterator<Item = v2::Status>) -> v2::Status {
    let mut first_fail: Option<v2::Status> = None;
    let mut any_ok = false;
    let mut mixed = false;
    for s in statuses {
        if is_ok(&s) {
            any_ok = true;
        } else if let Some(f) = &first_fail {
            mixed |= f.code != s.code;
        } else {
            first_fail = Some(s);
        }
    }
    match first_fail {
        None => ok(),
        Some(f) if !any_ok && !mixed => f,
        Some(f) => status(Code::MultipleResults, format!("some entries failed, first: {}", f.message)),
    }
}

/// The status a client sees for a backend failure.
pub fn from_backend(err: &BackendError) -> v2::Status {
    let code = match err {
        BackendError::TopicNotFound(_) => Code::TopicNotFound,
        BackendError::MessageTooLarge { .. } => Code::MessageBodyTooLarge,
        // Reaching this means forwarding was impossible (no known leader):
        // the client retries, and its next route query finds the new leader.
        BackendError::NotLeader { .. } => Code::HaNotAvailable,
        BackendError::PluginReject(_) => Code::Forbidden,
        BackendError::BadRequest(_) => Code::BadRequest,
        BackendError::Timeout(_) => Code::MasterPersistenceTimeout,
        BackendError::Internal(_) => Code::InternalServerError,
    };
    status(code, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_map_to_rocketmq_codes() {
        let cases = [
            (BackendError::TopicNotFound("t".into()), 40402),
            (BackendError::MessageTooLarge { size_bytes: 5, max_bytes: 4 }, 41301),
            (BackendError::NotLeader { leader: None }, 50002),
            (BackendError::PluginReject("no".into()), 40300),
            (BackendError::BadRequest("x".into()), 40000),
            (BackendError::Timeout("x".into()), 50401),
            (BackendError::Internal("x".into()), 50001),
        ];
        for (err, code) in cases {
            let s = from_backend(&err);
            assert_eq!(s.code, code, "{err}");
            assert!(s.message.contains(&err.to_string()[..3]));
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = status(Code::BadRequest, "é".repeat(STATUS_MESSAGE_BYTES_MAX));
        assert!(s.message.len() <= STATUS_MESSAGE_BYTES_MAX);
        assert!(s.message.chars().all(|c| c == 'é'));
        assert!(is_ok(&ok()));
        assert!(!is_ok(&s));
    }
}
