//! Password hashing with bounded memory. One Argon2id check takes its whole memory cost
//! (19 MiB by default) at once; a flood of wrong-password sign-ins, each allocating its
//! own, grew a server from ~100 MB to ~4.9 GB and the allocator never gave it back. Here
//! checks run on at most `workers` memory buffers, allocated once and reused, with a
//! short queue in front; beyond it a check is refused at once (`Overloaded`), never queued.

use crate::LibraryError;
use crate::accounts::KdfCost;
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Bytes of an Argon2id output this library writes.
const OUTPUT_LEN: usize = 32;

/// How many checks may run at once, and how many may wait for one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordLimits {
    /// Checks at once (each holds one memory buffer).
    pub workers: usize,
    /// Checks that may wait for a worker; more are refused at once.
    pub queue: usize,
    /// The longest a check waits for a worker before it is refused.
    pub wait: Duration,
}

impl Default for PasswordLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            workers: cores.clamp(1, 4),
            queue: cores.clamp(1, 4) * 4,
            wait: Duration::from_secs(2),
        }
    }
}

struct Pool {
    free: Vec<Vec<Block>>,
    busy: usize,
    waiting: usize,
}

/// The gate every password check passes.
pub(crate) struct PasswordGate {
    cost: KdfCost,
    limits: PasswordLimits,
    pool: Mutex<Pool>,
    freed: Condvar,
}

impl PasswordGate {
    pub(crate) fn new(cost: KdfCost, limits: PasswordLimits) -> Self {
        Self {
            cost,
            limits: PasswordLimits {
                workers: limits.workers.max(1),
                ..limits
            },
            pool: Mutex::new(Pool {
                free: Vec::new(),
                busy: 0,
                waiting: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn busy() -> LibraryError {
        LibraryError::Overloaded {
            what: "password checks",
            retry_after_ms: 1_000,
        }
    }

    /// Runs `f` with a memory buffer of at least `blocks` blocks, waiting briefly for one.
    fn with_memory<T>(
        &self,
        blocks: usize,
        f: impl FnOnce(&mut [Block]) -> T,
    ) -> Result<T, LibraryError> {
        let mut memory = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.busy >= self.limits.workers {
                if pool.waiting >= self.limits.queue {
                    return Err(Self::busy());
                }
                pool.waiting += 1;
                let (mut got, timeout) = self
                    .freed
                    .wait_timeout_while(pool, self.limits.wait, |p| p.busy >= self.limits.workers)
                    .unwrap_or_else(|p| p.into_inner());
                got.waiting -= 1;
                if timeout.timed_out() && got.busy >= self.limits.workers {
                    return Err(Self::busy());
                }
                pool = got;
            }
            pool.busy += 1;
            pool.free.pop().unwrap_or_default()
        };
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let out = f(&mut memory[..blocks]);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.busy -= 1;
        // A stored hash with a larger cost than ours would keep its buffer's size for
        // ever; give such a buffer back to the allocator instead.
        if memory.len() <= self.blocks() {
            pool.free.push(memory);
        }
        drop(pool);
        self.freed.notify_one();
        Ok(out)
    }

    fn params(&self) -> Params {
        Params::new(
            self.cost.memory_kib,
            self.cost.iterations,
            1,
            Some(OUTPUT_LEN),
        )
        .expect("KdfCost is within Argon2's bounds")
    }

    fn blocks(&self) -> usize {
        self.params().block_count()
    }

    /// A PHC string for `password` with `salt`.
    pub(crate) fn hash(&self, password: &str, salt: &[u8; 16]) -> Result<String, LibraryError> {
        let params = self.params();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut out = [0u8; OUTPUT_LEN];
        self.with_memory(params.block_count(), |memory| {
            argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, memory)
        })?
        .map_err(|e| LibraryError::InvalidArgument(format!("password hashing failed: {e}")))?;
        let salt = SaltString::encode_b64(salt)
            .map_err(|e| LibraryError::InvalidArgument(format!("salt: {e}")))?;
        let output = Output::new(&out)
            .map_err(|e| LibraryError::InvalidArgument(format!("password hash: {e}")))?;
        Ok(format!(
            "$argon2id$v=19$m={},t={},p=1${}${}",
            params.m_cost(),
            params.t_cost(),
            salt.as_str(),
            output
        ))
    }

    /// Whether `password` matches the PHC string `phc` (compared in constant time).
    pub(crate) fn verify(&self, password: &str, phc: &str) -> Result<bool, LibraryError> {
        let corrupt = || LibraryError::InvalidArgument("stored password hash is corrupt".into());
        let parsed = PasswordHash::new(phc).map_err(|_| corrupt())?;
        let params = Params::try_from(&parsed).map_err(|_| corrupt())?;
        let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|_| corrupt())?;
        let version = parsed
            .version
            .map_or(Ok(Version::V0x13), Version::try_from)
            .map_err(|_| corrupt())?;
        let expected = parsed.hash.ok_or_else(corrupt)?;
        let mut salt = [0u8; 64];
        let salt = parsed
            .salt
            .ok_or_else(corrupt)?
            .decode_b64(&mut salt)
            .map_err(|_| corrupt())?;
        let mut out = vec![0u8; expected.len()];
        let argon = Argon2::new(algorithm, version, params.clone());
        self.with_memory(params.block_count(), |memory| {
            argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, memory)
        })?
        .map_err(|_| corrupt())?;
        let got = Output::new(&out).map_err(|_| corrupt())?;
        Ok(got == expected)
    }

    /// The same work as a check, for a name that has no account: timing does not tell
    /// names apart.
    pub(crate) fn decoy(&self, password: &str) -> Result<(), LibraryError> {
        let params = self.params();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut out = [0u8; OUTPUT_LEN];
        self.with_memory(params.block_count(), |memory| {
            argon.hash_password_into_with_memory(
                password.as_bytes(),
                b"keepsake-no-such-account",
                &mut out,
                memory,
            )
        })?
        .map_err(|e| LibraryError::InvalidArgument(format!("password hashing failed: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordVerifier;

    fn cheap() -> KdfCost {
        KdfCost {
            memory_kib: 64,
            iterations: 1,
        }
    }

    #[test]
    fn hashes_are_standard_phc_strings_and_verify_both_ways() {
        let gate = PasswordGate::new(cheap(), PasswordLimits::default());
        let phc = gate.hash("correct horse", &[7; 16]).unwrap();
        // The argon2 crate's own verifier accepts what the gate wrote …
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        // … and the gate accepts what the crate writes (accounts made before the gate).
        use argon2::PasswordHasher;
        let salt = SaltString::encode_b64(&[9; 16]).unwrap();
        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"battery staple", &salt)
        .unwrap()
        .to_string();
        assert!(gate.verify("battery staple", &theirs).unwrap());
        assert!(!gate.verify("battery stapler", &theirs).unwrap());
        assert!(gate.verify("correct horse", &phc).unwrap());
        assert!(!gate.verify("correct horsf", &phc).unwrap());
    }

    #[test]
    fn checks_beyond_the_workers_and_the_queue_are_refused_at_once() {
        let gate = std::sync::Arc::new(PasswordGate::new(
            cheap(),
            PasswordLimits {
                workers: 1,
                queue: 0,
                wait: Duration::from_secs(5),
            },
        ));
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release_tx, release) = std::sync::mpsc::channel::<()>();
        let holder = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.with_memory(1, |_| {
                    entered_tx.send(()).unwrap();
                    release.recv().unwrap();
                })
            })
        };
        entered.recv().unwrap();
        let refused = gate.decoy("anything at all").unwrap_err();
        assert_eq!(refused.reason(), "OVERLOADED");
        release_tx.send(()).unwrap();
        holder.join().unwrap().unwrap();
        // The buffer came back: the next check runs.
        gate.decoy("anything at all").unwrap();
        assert_eq!(gate.pool.lock().unwrap().free.len(), 1);
    }
}
