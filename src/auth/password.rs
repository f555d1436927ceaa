//! Password hashing with argon2id, for the auth server.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`)
//! that carry their own parameters, so hashes made with older parameters still
//! verify, and [`Verified::needs_rehash`] tells the caller to store a fresh
//! hash after a successful login.
//!
//! Hashing is deliberately slow and memory-hard, so it runs on tokio's
//! blocking pool, at most `concurrency` at once (one per CPU by default):
//! a burst of logins waits asynchronously for a permit instead of starving
//! the async runtime or exhausting memory (each hash takes `m` KiB). The
//! wait has a bound too (`AUTH_HASH_QUEUE`): past it a hash is refused at
//! once ([`PasswordError::Busy`]), so a flood answers fast instead of every
//! request waiting out the request timeout behind it.
//!
//! Unknown users: call [`Hasher::verify_dummy`], which does the same work as
//! a real verify, so response times do not reveal which accounts exist.
//!
//! Only argon2 hashes are accepted; anything else (e.g. bcrypt `$2a$...`)
//! is [`PasswordError::Malformed`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// The shortest acceptable password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The longest acceptable password, in bytes (argon2 itself has no limit; this
/// bounds the work one request can cause).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Bounds on the parameters of a stored hash we agree to verify: a corrupt or
/// planted hash must not make one login allocate gigabytes or spin for minutes.
const MAX_STORED_M_KIB: u32 = 1 << 20;
const MAX_STORED_T: u32 = 64;
const MAX_STORED_P: u32 = 64;

/// Argon2id cost parameters. The defaults (m = 19456 KiB, t = 2, p = 1) are
/// the OWASP minimum for argon2id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for PasswordParams {
    fn default() -> Self {
        PasswordParams {
            m_cost: 19_456,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password is too weak: {reason}")]
    Weak { reason: String },
    #[error("password is too long (at most {MAX_PASSWORD_BYTES} bytes)")]
    TooLong,
    #[error("stored password hash is malformed")]
    Malformed,
    #[error("invalid password hashing parameters: {0}")]
    InvalidParams(String),
    #[error("password hashing failed: {0}")]
    Internal(String),
    /// Too many hashes are waiting already: retry shortly.
    #[error("too many password hashes are waiting")]
    Busy,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matches.
    pub ok: bool,
    /// The password matches but the stored hash was made with another
    /// algorithm, version or parameters: store [`Hasher::hash`] of it now.
    /// Always false when `ok` is false.
    pub needs_rehash: bool,
}

/// Checks a new password (sign-up, password change) against the policy: at
/// least [`MIN_PASSWORD_CHARS`] characters, at most [`MAX_PASSWORD_BYTES`] bytes.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::Weak {
            reason: format!("password must be at least {MIN_PASSWORD_CHARS} characters"),
        });
    }
    Ok(())
}

/// Hashes and verifies passwords on a bounded blocking pool. Cheap to clone;
/// clones share the pool.
#[derive(Clone)]
pub struct Hasher {
    inner: Arc<Inner>,
}

struct Inner {
    argon2: Argon2<'static>,
    params: PasswordParams,
    /// A well-formed hash with the current parameters that no password
    /// matches, for [`Hasher::verify_dummy`].
    dummy: String,
    permits: Arc<Semaphore>,
    concurrency: usize,
    running: AtomicUsize,
    /// Hashes waiting for a permit, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
    #[cfg(test)]
    hook: test_hook::Hook,
}

impl Hasher {
    /// A hasher with these parameters, running at most one hash per CPU.
    pub fn new(params: PasswordParams) -> Result<Self, PasswordError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_concurrency(params, cpus)
    }

    /// A hasher running at most one hash per CPU, with at most `queue` more
    /// waiting (past it, [`PasswordError::Busy`]).
    pub fn with_queue(params: PasswordParams, queue: usize) -> Result<Self, PasswordError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_limits(params, cpus, queue)
    }

    /// A hasher running at most `concurrency` (at least 1) hashes at once.
    pub fn with_concurrency(
        params: PasswordParams,
        concurrency: usize,
    ) -> Result<Self, PasswordError> {
        Self::with_limits(params, concurrency, usize::MAX)
    }

    /// At most `concurrency` (at least 1) hashes at once and `queue` waiting.
    pub fn with_limits(
        params: PasswordParams,
        concurrency: usize,
        queue: usize,
    ) -> Result<Self, PasswordError> {
        let p = Params::new(params.m_cost, params.t_cost, params.p_cost, None)
            .map_err(|e| PasswordError::InvalidParams(e.to_string()))?;
        let concurrency = concurrency.max(1);
        let dummy = format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            params.m_cost,
            params.t_cost,
            params.p_cost,
            "A".repeat(22),
            "A".repeat(43)
        );
        Ok(Hasher {
            inner: Arc::new(Inner {
                argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, p),
                params,
                dummy,
                permits: Arc::new(Semaphore::new(concurrency)),
                concurrency,
                running: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                max_waiting: queue,
                #[cfg(test)]
                hook: Default::default(),
            }),
        })
    }

    pub fn params(&self) -> PasswordParams {
        self.inner.params
    }

    /// How many hashes may run at once.
    pub fn concurrency(&self) -> usize {
        self.inner.concurrency
    }

    /// How many hashes are running right now.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Relaxed)
    }

    /// A PHC string of `password` with a fresh random salt and the current
    /// parameters. Does not apply [`check_policy`] (call it first for new
    /// passwords), but refuses passwords over [`MAX_PASSWORD_BYTES`].
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        let password = password.to_owned();
        self.run(move |inner| {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .map_err(|e| PasswordError::Internal(e.to_string()))?;
            inner
                .argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Internal(e.to_string()))
        })
        .await?
    }

    /// Checks `password` against a stored PHC string, in constant time.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<Verified, PasswordError> {
        // Parse (cheaply) before taking a permit: a malformed hash fails fast.
        let needs_rehash = inspect(phc, &self.inner.params)?;
        let (password, phc) = (password.to_owned(), phc.to_owned());
        let ok = self
            .run(move |inner| verify_blocking(&inner.argon2, &password, &phc))
            .await??;
        Ok(Verified {
            ok,
            needs_rehash: ok && needs_rehash,
        })
    }

    /// Spends the same time as [`verify`](Self::verify) against a hash with
    /// the current parameters, and matches nothing: for unknown users.
    /// Refused only when the queue is full ([`PasswordError::Busy`]).
    pub async fn verify_dummy(&self, password: &str) -> Result<(), PasswordError> {
        let phc = self.inner.dummy.clone();
        let _ = inspect(&phc, &self.inner.params);
        let password = password.to_owned();
        match self
            .run(move |inner| verify_blocking(&inner.argon2, &password, &phc))
            .await
        {
            Err(PasswordError::Busy) => Err(PasswordError::Busy),
            _ => Ok(()),
        }
    }

    /// Runs `work` on the blocking pool once a permit is free (or refuses at
    /// once when the queue is full). The permit is held until the work
    /// ends, even if the caller stops waiting.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = match Arc::clone(&self.inner.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let queued = Waiting::enter(&self.inner)?;
                let permit = Arc::clone(&self.inner.permits)
                    .acquire_owned()
                    .await
                    .map_err(|e| PasswordError::Internal(e.to_string()))?;
                drop(queued);
                permit
            }
        };
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _running = Running::enter(&inner);
            work(&inner)
        })
        .await
        .map_err(|e| PasswordError::Internal(e.to_string()))
    }
}

/// Counts a hash waiting for a permit for as long as it lives.
struct Waiting<'a>(&'a Inner);

impl<'a> Waiting<'a> {
    fn enter(inner: &'a Inner) -> Result<Self, PasswordError> {
        let before = inner.waiting.fetch_add(1, Ordering::SeqCst);
        let queued = Waiting(inner);
        if before >= inner.max_waiting {
            return Err(PasswordError::Busy);
        }
        Ok(queued)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a running hash for as long as it lives.
struct Running<'a>(&'a Inner);

impl<'a> Running<'a> {
    fn enter(inner: &'a Inner) -> Self {
        let _now = inner.running.fetch_add(1, Ordering::SeqCst) + 1;
        #[cfg(test)]
        inner.hook.entered(_now);
        Running(inner)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Parses a stored hash and says whether it differs from the current
/// algorithm and parameters.
fn inspect(phc: &str, current: &PasswordParams) -> Result<bool, PasswordError> {
    let hash = PasswordHash::new(phc).map_err(|_| PasswordError::Malformed)?;
    let algorithm = Algorithm::try_from(hash.algorithm).map_err(|_| PasswordError::Malformed)?;
    let version = match hash.version {
        None => Version::V0x10,
        Some(v) => Version::try_from(v).map_err(|_| PasswordError::Malformed)?,
    };
    let params = Params::try_from(&hash).map_err(|_| PasswordError::Malformed)?;
    let (Some(salt), Some(output)) = (&hash.salt, &hash.hash) else {
        return Err(PasswordError::Malformed);
    };
    let mut buf = [0u8; 64];
    if salt.decode_b64(&mut buf).is_err()
        || params.m_cost() > MAX_STORED_M_KIB
        || params.t_cost() > MAX_STORED_T
        || params.p_cost() > MAX_STORED_P
    {
        return Err(PasswordError::Malformed);
    }
    Ok(algorithm != Algorithm::Argon2id
        || version != Version::V0x13
        || params.m_cost() != current.m_cost
        || params.t_cost() != current.t_cost
        || params.p_cost() != current.p_cost
        || output.len() != Params::DEFAULT_OUTPUT_LEN
        || !params.keyid().is_empty()
        || !params.data().is_empty())
}

/// The slow part of a verification (argon2 compares outputs in constant time).
fn verify_blocking(argon2: &Argon2<'_>, password: &str, phc: &str) -> Result<bool, PasswordError> {
    let hash = PasswordHash::new(phc).map_err(|_| PasswordError::Malformed)?;
    match argon2.verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(_) => Err(PasswordError::Malformed),
    }
}

#[cfg(test)]
mod test_hook {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    /// Records the peak number of hashes running at once, and can make each
    /// one last longer so overlaps are certain.
    #[derive(Default)]
    pub(super) struct Hook {
        pub peak: AtomicUsize,
        pub hold_ms: AtomicU64,
    }

    impl Hook {
        pub fn entered(&self, running: usize) {
            self.peak.fetch_max(running, Ordering::SeqCst);
            let hold = self.hold_ms.load(Ordering::SeqCst);
            if hold > 0 {
                std::thread::sleep(Duration::from_millis(hold));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const CHEAP: PasswordParams = PasswordParams {
        m_cost: 8,
        t_cost: 1,
        p_cost: 1,
    };

    fn cheap() -> Hasher {
        Hasher::new(CHEAP).unwrap()
    }

    #[tokio::test]
    async fn roundtrip() {
        let h = cheap();
        let phc = h.hash("correct horse battery").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{phc}");
        let v = h.verify("correct horse battery", &phc).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        // Salted: the same password hashes differently every time.
        assert_ne!(phc, h.hash("correct horse battery").await.unwrap());
    }

    #[tokio::test]
    async fn wrong_password() {
        let h = cheap();
        let phc = h.hash("correct horse battery").await.unwrap();
        for wrong in ["correct horse batterY", "", "correct horse battery "] {
            let v = h.verify(wrong, &phc).await.unwrap();
            assert!(!v.ok && !v.needs_rehash, "{wrong:?}");
        }
    }

    #[tokio::test]
    async fn needs_rehash_when_params_change() {
        let old = cheap();
        let phc = old.hash("password123").await.unwrap();
        let new = Hasher::new(PasswordParams { t_cost: 2, ..CHEAP }).unwrap();
        let v = new.verify("password123", &phc).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
        // Only a matching password asks for a rehash.
        let v = new.verify("password124", &phc).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: false,
                needs_rehash: false
            }
        );
        // The rehash is current.
        let fresh = new.hash("password123").await.unwrap();
        assert!(
            !new.verify("password123", &fresh)
                .await
                .unwrap()
                .needs_rehash
        );

        // Another argon2 variant (here argon2i) verifies and asks for a rehash.
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        );
        let phc_i = argon2i
            .hash_password(b"password123", &salt)
            .unwrap()
            .to_string();
        assert!(phc_i.starts_with("$argon2i$"));
        let v = old.verify("password123", &phc_i).await.unwrap();
        assert!(v.ok && v.needs_rehash);
    }

    #[tokio::test]
    async fn malformed_phc() {
        let h = cheap();
        let good = h.hash("password123").await.unwrap();
        let no_hash = good.rsplit_once('$').unwrap().0.to_owned();
        let huge = good.replace("m=8,", "m=4000000,");
        let cases = [
            "".to_owned(),
            "not a hash".to_owned(),
            "$argon2id$".to_owned(),
            "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy".to_owned(),
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_owned(),
            "$argon2id$v=19$m=8,t=1,p=1$!!!$AAAA".to_owned(),
            "$argon2id$v=99$m=8,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .to_owned(),
            "$argon2id$v=19$m=8,t=1,p=1,x=3$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .to_owned(),
            "$argon2id$v=19$m=1,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .to_owned(),
            no_hash,
            huge,
            good.replace("$v=19", "").replace("argon2id", "argon3"),
        ];
        for phc in &cases {
            let r = h.verify("password123", phc).await;
            assert!(matches!(r, Err(PasswordError::Malformed)), "{phc:?}: {r:?}");
        }
    }

    #[tokio::test]
    async fn dummy_verify_matches_nothing_and_does_the_work() {
        let h = cheap();
        h.verify_dummy("password123").await.unwrap();
        // The dummy hash is well-formed with the current parameters.
        assert!(!inspect(&h.inner.dummy, &CHEAP).unwrap());
        assert!(!verify_blocking(&h.inner.argon2, "", &h.inner.dummy).unwrap());
        assert!(h.inner.hook.peak.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn policy_limits() {
        assert!(matches!(
            check_policy("1234567"),
            Err(PasswordError::Weak { .. })
        ));
        assert!(matches!(check_policy(""), Err(PasswordError::Weak { .. })));
        check_policy("12345678").unwrap();
        // Characters, not bytes: 8 two-byte characters are fine, 7 are not.
        check_policy(&"é".repeat(8)).unwrap();
        assert!(matches!(
            check_policy(&"é".repeat(7)),
            Err(PasswordError::Weak { .. })
        ));
        check_policy(&"a".repeat(MAX_PASSWORD_BYTES)).unwrap();
        assert!(matches!(
            check_policy(&"a".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::TooLong)
        ));
        // Longer than bcrypt's 72 bytes is fine.
        check_policy(&"a".repeat(100)).unwrap();
    }

    #[tokio::test]
    async fn hash_refuses_overlong_passwords() {
        let h = cheap();
        let r = h.hash(&"a".repeat(MAX_PASSWORD_BYTES + 1)).await;
        assert!(matches!(r, Err(PasswordError::TooLong)));
        let long = "a".repeat(MAX_PASSWORD_BYTES);
        let phc = h.hash(&long).await.unwrap();
        assert!(h.verify(&long, &phc).await.unwrap().ok);
    }

    #[test]
    fn invalid_params_are_refused() {
        let bad = PasswordParams { m_cost: 1, ..CHEAP };
        assert!(matches!(
            Hasher::new(bad),
            Err(PasswordError::InvalidParams(_))
        ));
        let zero_t = PasswordParams { t_cost: 0, ..CHEAP };
        assert!(Hasher::new(zero_t).is_err());
        assert_eq!(Hasher::with_concurrency(CHEAP, 0).unwrap().concurrency(), 1);
        assert!(Hasher::new(CHEAP).unwrap().concurrency() >= 1);
    }

    #[tokio::test]
    async fn default_params() {
        assert_eq!(
            PasswordParams::default(),
            PasswordParams {
                m_cost: 19_456,
                t_cost: 2,
                p_cost: 1
            }
        );
        let h = Hasher::new(PasswordParams::default()).unwrap();
        let phc = h.hash("correct horse battery").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let v = h.verify("correct horse battery", &phc).await.unwrap();
        assert!(v.ok && !v.needs_rehash);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pool_bounds_concurrent_hashes() {
        let h = Hasher::with_concurrency(CHEAP, 2).unwrap();
        h.inner.hook.hold_ms.store(50, Ordering::SeqCst);
        let started = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(&format!("password-{i}")).await.unwrap() })
            })
            .collect();
        // While they run, the async runtime stays responsive.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(h.running() <= 2);
        let mut phcs = Vec::new();
        for t in tasks {
            phcs.push(t.await.unwrap());
        }
        assert_eq!(phcs.len(), 8);
        assert_eq!(h.inner.hook.peak.load(Ordering::SeqCst), 2);
        // 8 hashes, 2 at a time, 50 ms each: at least 4 rounds.
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(h.running(), 0);
        assert_eq!(h.inner.permits.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_dropped_caller_keeps_its_permit_until_the_hash_ends() {
        let h = Hasher::with_concurrency(CHEAP, 1).unwrap();
        h.inner.hook.hold_ms.store(100, Ordering::SeqCst);
        let first = {
            let h = h.clone();
            tokio::spawn(async move { h.hash("password-1").await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        first.abort();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The blocking work still runs, so the only permit is still taken.
        assert_eq!(h.inner.permits.available_permits(), 0);
        h.inner.hook.hold_ms.store(0, Ordering::SeqCst);
        h.hash("password-2").await.unwrap();
        assert_eq!(h.inner.hook.peak.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_queue_bound_hashes_are_refused_at_once() {
        let h = Hasher::with_limits(CHEAP, 1, 2).unwrap();
        h.inner.hook.hold_ms.store(300, Ordering::SeqCst);
        // One runs, two wait: the queue is full.
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(&format!("password-{i}")).await })
            })
            .collect();
        while h.running() == 0 || h.inner.waiting.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(
            h.hash("one too many").await,
            Err(PasswordError::Busy)
        ));
        assert!(matches!(
            h.verify("one too many", &h.inner.dummy).await,
            Err(PasswordError::Busy)
        ));
        // Refused without waiting: the first hash is still running (it holds
        // 300 ms), and the refused ones left the queue as they were.
        assert_eq!(h.running(), 1);
        assert_eq!(h.inner.waiting.load(Ordering::SeqCst), 2);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // The queue drained: hashing works again.
        h.inner.hook.hold_ms.store(0, Ordering::SeqCst);
        h.hash("after the flood").await.unwrap();
        assert_eq!(h.inner.waiting.load(Ordering::SeqCst), 0);
    }
}
