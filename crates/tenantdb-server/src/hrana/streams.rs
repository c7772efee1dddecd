//! Hrana streams over HTTP: a stream is a tenant connection (with its open transaction, if any)
//! kept between requests and found again by its baton.
//!
//! A baton is `base64url(stream id | sequence | HMAC-SHA256(key, id | sequence | tenant))`.
//! The key is random per server process, so batons cannot be forged; the sequence changes with
//! every response, so a replayed (stale) baton is refused; the tenant is inside the MAC, so a
//! baton taken from another user's stream is just an invalid baton: it reveals nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tenantdb::{Lease, TenantId};

use super::exec::StreamState;

type HmacSha256 = Hmac<Sha256>;

const MAC_LEN: usize = 16;

/// An open stream, owned by whoever is running a request on it.
pub struct Stream {
    id: u64,
    seq: u64,
    pub tenant: TenantId,
    pub lease: Lease,
    pub state: StreamState,
}

enum Slot {
    Idle {
        stream: Box<Stream>,
        since: Instant,
    },
    /// A request is running on the stream; another request with the same baton must wait for
    /// its response (the client serializes requests on a stream).
    Busy,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatonError {
    #[error("the baton is not valid: start a new stream")]
    Invalid,
    #[error(
        "the stream is busy with another request: requests on a stream must wait for the previous response"
    )]
    Busy,
    #[error("too many open streams ({0}); close streams you no longer use")]
    TooMany(usize),
}

pub struct Streams {
    slots: Mutex<HashMap<u64, Slot>>,
    key: [u8; 32],
    next_id: AtomicU64,
    idle_timeout: Duration,
    max_streams: usize,
}

impl Streams {
    pub fn new(idle_timeout: Duration, max_streams: usize) -> std::io::Result<Self> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(std::io::Error::other)?;
        Ok(Streams {
            slots: Mutex::new(HashMap::new()),
            key,
            next_id: AtomicU64::new(1),
            idle_timeout,
            max_streams,
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new stream around a connection; it is registered when first put back.
    pub fn open(&self, tenant: TenantId, lease: Lease) -> Result<Box<Stream>, BatonError> {
        if self.slots().len() >= self.max_streams {
            return Err(BatonError::TooMany(self.max_streams));
        }
        Ok(Box::new(Stream {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            seq: 0,
            tenant,
            lease,
            state: StreamState::default(),
        }))
    }

    /// Takes the stream a baton names, for `tenant` only.
    pub fn take(&self, baton: &str, tenant: &TenantId) -> Result<Box<Stream>, BatonError> {
        let (id, seq) = self.verify(baton, tenant).ok_or(BatonError::Invalid)?;
        let mut slots = self.slots();
        match slots.get(&id) {
            Some(Slot::Idle { stream, .. }) if stream.seq == seq && &stream.tenant == tenant => {}
            Some(Slot::Busy) => return Err(BatonError::Busy),
            _ => return Err(BatonError::Invalid),
        }
        match slots.insert(id, Slot::Busy) {
            Some(Slot::Idle { stream, .. }) => Ok(stream),
            _ => Err(BatonError::Invalid),
        }
    }

    /// The baton [`Streams::put_back`] will issue for this stream, for responses whose head is
    /// sent before the work is done (cursors).
    pub fn next_baton(&self, stream: &Stream) -> String {
        self.baton(stream.id, stream.seq + 1, &stream.tenant)
    }

    /// Parks a stream after a request and returns the baton for the next one.
    pub fn put_back(&self, mut stream: Box<Stream>) -> String {
        stream.seq += 1;
        let baton = self.baton(stream.id, stream.seq, &stream.tenant);
        self.slots().insert(
            stream.id,
            Slot::Idle {
                stream,
                since: Instant::now(),
            },
        );
        baton
    }

    /// Forgets a stream that a request closed (or that failed while taken).
    pub fn forget(&self, stream: &Stream) {
        let mut slots = self.slots();
        if matches!(slots.get(&stream.id), Some(Slot::Busy)) {
            slots.remove(&stream.id);
        }
    }

    /// Removes streams idle for longer than the timeout and returns them; dropping them rolls
    /// back any transaction they held (do that off the async executor).
    pub fn expire(&self) -> Vec<Box<Stream>> {
        let now = Instant::now();
        let mut slots = self.slots();
        let expired: Vec<u64> = slots
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Idle { since, .. } if now.duration_since(*since) > self.idle_timeout => {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        expired
            .into_iter()
            .filter_map(|id| match slots.remove(&id) {
                Some(Slot::Idle { stream, .. }) => Some(stream),
                _ => None,
            })
            .collect()
    }

    /// Removes every idle stream (shutdown).
    pub fn drain(&self) -> Vec<Box<Stream>> {
        self.slots()
            .drain()
            .filter_map(|(_, slot)| match slot {
                Slot::Idle { stream, .. } => Some(stream),
                Slot::Busy => None,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn mac(&self, id: u64, seq: u64, tenant: &TenantId) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(&id.to_be_bytes());
        mac.update(&seq.to_be_bytes());
        mac.update(tenant.as_str().as_bytes());
        mac
    }

    fn baton(&self, id: u64, seq: u64, tenant: &TenantId) -> String {
        let tag = self.mac(id, seq, tenant).finalize().into_bytes();
        let mut raw = Vec::with_capacity(16 + MAC_LEN);
        raw.extend_from_slice(&id.to_be_bytes());
        raw.extend_from_slice(&seq.to_be_bytes());
        raw.extend_from_slice(&tag[..MAC_LEN]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn verify(&self, baton: &str, tenant: &TenantId) -> Option<(u64, u64)> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(baton)
            .ok()?;
        if raw.len() != 16 + MAC_LEN {
            return None;
        }
        let id = u64::from_be_bytes(raw[..8].try_into().ok()?);
        let seq = u64::from_be_bytes(raw[8..16].try_into().ok()?);
        // verify_truncated_left compares in constant time.
        self.mac(id, seq, tenant)
            .verify_truncated_left(&raw[16..])
            .ok()?;
        Some((id, seq))
    }
}
