//! The text of a caught panic.
//!
//! Three places catch a panic and turn it into an error instead of losing it: the Raft
//! driver (a failed invariant becomes a fail-stop), a plugin's host functions (the call
//! fails, the broker goes on), and the simulation tests (the failing seed is printed).
//! They all need the payload's message; `panic!` leaves it as a `&'static str` for a
//! literal and as a `String` for a formatted message.

use std::any::Any;

/// What a panic payload says, or `"(non-string panic payload)"` for `panic_any` with
/// another type.
pub fn message(payload: &(dyn Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "(non-string panic payload)"
    }
}

#[cfg(test)]
mod tests {
    use super::message;
    use std::panic::catch_unwind;

    #[test]
    fn literal_formatted_and_other_payloads() {
        let literal = catch_unwind(|| panic!("a literal")).unwrap_err();
        assert_eq!(message(&*literal), "a literal");
        let n = 7;
        let formatted = catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(message(&*formatted), "formatted 7");
        let other = catch_unwind(|| std::panic::panic_any(42u32)).unwrap_err();
        assert_eq!(message(&*other), "(non-string panic payload)");
    }
}
