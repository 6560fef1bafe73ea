//! (De)serializes an `Instant` as signed microseconds from an anchor that
//! both images agree on (the `CLOCK_MONOTONIC` time the state was written).
//!
//! The policy's state holds `Instant`s (deadlines, when a generation
//! started); this is how they cross an upgrade: the image that writes the
//! state and the one that reads it run each with its own `Instant`s, and
//! agree only on `CLOCK_MONOTONIC`. Used as `#[serde(with = "clock")]` (or
//! `clock::option`), inside [`with_anchor`].

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    static ANCHOR: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with `anchor` as the zero of every `Instant` (de)serialized.
pub(crate) fn with_anchor<T>(anchor: Instant, f: impl FnOnce() -> T) -> T {
    let before = ANCHOR.with(|a| a.replace(Some(anchor)));
    let out = f();
    ANCHOR.with(|a| a.set(before));
    out
}

fn anchor() -> Instant {
    ANCHOR.with(Cell::get).unwrap_or_else(Instant::now)
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

pub(crate) fn serialize<S: Serializer>(at: &Instant, s: S) -> Result<S::Ok, S::Error> {
    let anchor = anchor();
    let offset =
        if *at >= anchor { micros(at.duration_since(anchor)) } else { -micros(anchor.duration_since(*at)) };
    offset.serialize(s)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
    let offset = i64::deserialize(d)?;
    let anchor = anchor();
    let by = Duration::from_micros(offset.unsigned_abs());
    Ok(if offset >= 0 {
        anchor.checked_add(by).unwrap_or(anchor)
    } else {
        anchor.checked_sub(by).unwrap_or(anchor)
    })
}

pub(crate) mod option {
    use std::time::Instant;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(at: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::serialize(at, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super")] Instant);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(at)| at))
    }
}
