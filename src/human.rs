//! Values as people read them in messages.

use std::time::Duration;

/// A duration as printed in messages: whole milliseconds below a second,
/// whole seconds above (never `6s 999ms 991us 564ns`).
pub fn show_duration(d: Duration) -> String {
    let rounded = if d < Duration::from_secs(1) {
        Duration::from_millis(((d.as_micros() + 500) / 1000) as u64)
    } else {
        Duration::from_secs(((d.as_millis() + 500) / 1000) as u64)
    };
    humantime::format_duration(rounded).to_string()
}
