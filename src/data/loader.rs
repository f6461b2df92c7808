//! The training data loader: memory-mapped token shards cut into windows of `seq_len + 1`
//! tokens (inputs and their next-token targets), visited in an order that is a pure function of
//! (seed, epoch, rank, world size).
//!
//! Each epoch visits every window exactly once; rank `r` of `w` takes the windows at positions
//! `r, r + w, r + 2w, …` of the epoch's permutation, so ranks never share a window and together
//! cover the epoch. Epoch 0 cuts the shards at multiples of `seq_len`; every later epoch shifts
//! the cuts by an offset drawn from (seed, epoch), so a model that sees the data several times
//! does not see the same sequences again (the tokens near a cut get other context). The
//! position ([`LoaderState`]) is two numbers, saved with a checkpoint and restored exactly.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::engine::Rng;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {bytes} bytes is not a whole number of u16 tokens", path.display())]
    OddSize { path: PathBuf, bytes: usize },
    #[error("no window of {window} tokens fits in the shards ({tokens} tokens in all)")]
    TooShort { window: usize, tokens: usize },
    #[error("rank {rank} is not below the world size {world}")]
    BadRank { rank: usize, world: usize },
    #[error(
        "the saved data position (epoch {epoch}, window {cursor}) is past the {windows} windows an epoch of these shards has"
    )]
    BadState {
        epoch: u64,
        cursor: u64,
        windows: u64,
    },
}

/// Where a loader is: the epoch, and how many of this rank's windows of it were used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    pub cursor: u64,
}

/// A window: shard index and first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub shard: u32,
    pub start: u64,
}

pub struct Loader {
    shards: Vec<Mmap>,
    /// The current epoch's windows, in file order.
    windows: Vec<Window>,
    seq_len: usize,
    seed: u64,
    rank: usize,
    world: usize,
    state: LoaderState,
    /// The current epoch's permutation of window indices.
    order: Vec<u32>,
}

impl Loader {
    pub fn open(
        paths: &[PathBuf],
        seq_len: usize,
        seed: u64,
        rank: usize,
        world: usize,
    ) -> Result<Loader, LoaderError> {
        if rank >= world {
            return Err(LoaderError::BadRank { rank, world });
        }
        let shards = paths
            .iter()
            .map(|path| map_shard(path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut loader = Loader {
            shards,
            windows: Vec::new(),
            seq_len,
            seed,
            rank,
            world,
            state: LoaderState {
                epoch: 0,
                cursor: 0,
            },
            order: Vec::new(),
        };
        loader.shuffle();
        if loader.windows.is_empty() {
            return Err(LoaderError::TooShort {
                window: seq_len + 1,
                tokens: loader.shards.iter().map(|s| s.len() / 2).sum(),
            });
        }
        Ok(loader)
    }

    /// Windows of `seq_len + 1` tokens starting every `seq_len` tokens from `offset`: each token
    /// after the offset is a target once, and the last token of a window is the first input of
    /// the next.
    fn cut(&self, offset: usize) -> Vec<Window> {
        let mut windows = Vec::new();
        for (index, shard) in self.shards.iter().enumerate() {
            let tokens = shard.len() / 2;
            let count = tokens.saturating_sub(1 + offset) / self.seq_len;
            windows.extend((0..count).map(|i| Window {
                shard: index as u32,
                start: (offset + i * self.seq_len) as u64,
            }));
        }
        windows
    }

    /// Where epoch `epoch` cuts the shards: 0 for the first, a seeded offset after.
    fn epoch_offset(&self, epoch: u64) -> usize {
        if epoch == 0 {
            return 0;
        }
        let mut rng = Rng::new(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0FF5E7);
        rng.below(self.seq_len as u64) as usize
    }

    /// Windows in the current epoch, over all ranks.
    pub fn windows_per_epoch(&self) -> usize {
        self.windows.len()
    }

    /// The current epoch's windows in file order, regardless of the shuffle.
    pub fn windows_in_file_order(&self) -> Vec<Window> {
        self.windows.clone()
    }

    /// This rank's windows in the current epoch.
    pub fn rank_windows(&self) -> u64 {
        let n = self.windows.len();
        ((n - self.rank).div_ceil(self.world)) as u64
    }

    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continues from a saved position, which must be one of these shards' (a saved state never
    /// points past an epoch's end).
    pub fn restore(&mut self, state: LoaderState) -> Result<(), LoaderError> {
        if state.epoch != self.state.epoch {
            self.state = LoaderState {
                epoch: state.epoch,
                cursor: 0,
            };
            self.shuffle();
        }
        let windows = self.rank_windows();
        if state.cursor >= windows {
            return Err(LoaderError::BadState {
                epoch: state.epoch,
                cursor: state.cursor,
                windows,
            });
        }
        self.state = state;
        Ok(())
    }

    /// Cuts the current epoch's windows and draws its order.
    fn shuffle(&mut self) {
        self.windows = self.cut(self.epoch_offset(self.state.epoch));
        if self.windows.is_empty() {
            // Shards barely longer than a window have none at some offsets.
            self.windows = self.cut(0);
        }
        let mut rng = Rng::new(self.seed ^ self.state.epoch.wrapping_mul(0xA076_1D64_78BD_642F));
        self.order = (0..self.windows.len() as u32).collect();
        for i in (1..self.order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            self.order.swap(i, j);
        }
    }

    /// The next window of this rank; after the last one of an epoch the loader moves into the
    /// next epoch, so a saved state never points past an epoch's end.
    pub fn next_window(&mut self) -> Window {
        let position = self.rank + self.state.cursor as usize * self.world;
        let window = self.windows[self.order[position] as usize];
        self.state.cursor += 1;
        if self.state.cursor >= self.rank_windows() {
            // Epochs only seed the order, so a restored count at the limit may wrap.
            self.state.epoch = self.state.epoch.wrapping_add(1);
            self.state.cursor = 0;
            self.shuffle();
        }
        window
    }

    /// Fills `inputs` and `targets` (each `batch × seq_len`) with the next `batch` windows.
    pub fn next_batch(&mut self, batch: usize, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) {
        inputs.clear();
        targets.clear();
        for _ in 0..batch {
            let window = self.next_window();
            let tokens = self.tokens(window);
            inputs.extend(tokens[..self.seq_len].iter().copied());
            targets.extend(tokens[1..].iter().copied());
        }
    }

    /// The `seq_len + 1` tokens of a window.
    pub fn tokens(&self, window: Window) -> Vec<u32> {
        let bytes = &self.shards[window.shard as usize];
        let start = window.start as usize * 2;
        bytes[start..start + (self.seq_len + 1) * 2]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
            .collect()
    }
}

fn map_shard(path: &Path) -> Result<Mmap, LoaderError> {
    let io = |source| LoaderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: shards are finished cache artifacts, never modified in place; a file changed
    // under the map by someone else is outside what tinyllm promises.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    if map.len() % 2 != 0 {
        return Err(LoaderError::OddSize {
            path: path.to_path_buf(),
            bytes: map.len(),
        });
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn shards(dir: &Path, lengths: &[usize]) -> Vec<PathBuf> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let path = dir.join(format!("{i}.bin"));
                let bytes: Vec<u8> = (0..len)
                    .flat_map(|t| (((i * 1000 + t) % 65_000) as u16).to_le_bytes())
                    .collect();
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn each_epoch_visits_every_window_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[100, 57, 9]);
        let mut loader = Loader::open(&paths, 8, 3, 0, 1).unwrap();
        assert_eq!(loader.windows_per_epoch(), 99 / 8 + 56 / 8 + 8 / 8);
        let mut epochs = Vec::new();
        for epoch in 0..4 {
            assert_eq!(loader.state().epoch, epoch);
            let all: HashSet<Window> = loader.windows_in_file_order().into_iter().collect();
            let n = loader.windows_per_epoch();
            let seen: Vec<Window> = (0..n).map(|_| loader.next_window()).collect();
            let unique: HashSet<Window> = seen.iter().copied().collect();
            assert_eq!(unique, all, "epoch {epoch} visits each of its windows once");
            epochs.push(unique);
        }
        assert_eq!(loader.state().epoch, 4);
        // Later epochs cut the shards elsewhere.
        assert!(epochs[1..].iter().any(|e| e != &epochs[0]));
    }

    #[test]
    fn ranks_are_disjoint_and_cover_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[300, 121]);
        let mut all = HashSet::new();
        let mut total = 0;
        for rank in 0..2 {
            let mut loader = Loader::open(&paths, 8, 11, rank, 2).unwrap();
            let windows: Vec<Window> = (0..loader.rank_windows())
                .map(|_| loader.next_window())
                .collect();
            total += windows.len();
            all.extend(windows);
        }
        let epoch = Loader::open(&paths, 8, 11, 0, 1)
            .unwrap()
            .windows_per_epoch();
        assert_eq!(total, epoch);
        assert_eq!(all.len(), epoch);
        assert!(matches!(
            Loader::open(&paths, 8, 11, 2, 2),
            Err(LoaderError::BadRank { .. })
        ));
    }

    #[test]
    fn a_restored_loader_continues_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[500, 333]);
        let batches = |loader: &mut Loader, n: usize| {
            (0..n)
                .map(|_| {
                    let (mut x, mut y) = (Vec::new(), Vec::new());
                    loader.next_batch(4, &mut x, &mut y);
                    (x, y)
                })
                .collect::<Vec<_>>()
        };
        let mut straight = Loader::open(&paths, 16, 5, 0, 1).unwrap();
        batches(&mut straight, 7);
        let saved = straight.state();
        let expected = batches(&mut straight, 100);

        let mut resumed = Loader::open(&paths, 16, 5, 0, 1).unwrap();
        resumed.restore(saved).unwrap();
        assert_eq!(batches(&mut resumed, 100), expected);
        // Targets are the inputs shifted by one.
        let (x, y) = &expected[0];
        assert_eq!(&x[1..16], &y[..15]);
    }

    #[test]
    fn bad_shards_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("odd.bin");
        std::fs::write(&odd, [1u8, 2, 3]).unwrap();
        let err = Loader::open(&[odd], 4, 0, 0, 1).err().unwrap().to_string();
        assert!(err.contains("3 bytes is not a whole number"), "{err}");
        let short = shards(dir.path(), &[4]);
        assert!(matches!(
            Loader::open(&short, 8, 0, 0, 1),
            Err(LoaderError::TooShort { .. })
        ));
    }
}
