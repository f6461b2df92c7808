//! The training data loader: memory-mapped token shards cut into windows of `seq_len + 1`
//! tokens (inputs and their next-token targets), visited in an order that is a pure function of
//! (seed, epoch) and the reader's [`Share`].
//!
//! The *stream* is epoch 0's windows in a seeded order, then epoch 1's, and so on: each epoch
//! visits every window exactly once. Epoch 0 cuts the shards at multiples of `seq_len`; every
//! later epoch shifts the cuts by an offset drawn from (seed, epoch), so a model that sees the
//! data several times does not see the same sequences again (the tokens near a cut get other
//! context); an epoch cut elsewhere may hold fewer windows.
//!
//! Data-parallel ranks cut the stream into cycles of `world × chunk` windows, `chunk` being what
//! one rank reads per optimizer step, and rank `r` takes the `r`-th run of `chunk` windows of
//! every cycle; cycles run on across epoch ends. So `w` ranks with batch `b` and `a`
//! accumulation steps read the same windows in the same micro-batches as one process with batch
//! `b` and `w·a` accumulation steps (rank `r`'s micro-batch `j` is that process's micro-batch
//! `r·a + j`), so the two runs can be bit-identical; and ranks never share a window.
//!
//! The position ([`LoaderState`]) is where the current cycle starts in the stream, plus how
//! much of its chunk this rank has taken. Between optimizer steps it is the same on every rank,
//! so a checkpoint's position re-shards exactly: restored under any world size and chunk, a run
//! goes on with the same stream from that cycle start.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::engine::Rng;

/// The most windows a cycle may hold, so that positions stay far from overflowing.
const MAX_CYCLE: usize = u32::MAX as usize;

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
        "a data share of world size {world} and chunk {chunk} windows cannot be read: both must \
         be at least 1 and world size × chunk at most {max}",
        max = MAX_CYCLE
    )]
    BadShare { world: usize, chunk: usize },
    #[error(
        "the saved data position (epoch {epoch}, window {cursor}, {taken} windows into a chunk) \
         is past the end: that epoch of these shards has {windows} windows and a chunk here is \
         {chunk}"
    )]
    BadState {
        epoch: u64,
        cursor: u64,
        taken: u64,
        windows: u64,
        chunk: usize,
    },
}

/// Which part of the stream a reader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub rank: usize,
    pub world: usize,
    /// Windows one rank takes per optimizer step: batch × accumulation steps.
    pub chunk: usize,
}

impl Share {
    /// The whole stream, window by window: one process.
    pub fn single() -> Share {
        Share {
            rank: 0,
            world: 1,
            chunk: 1,
        }
    }
}

/// Where a loader is: the stream position (epoch, index into its order) where the current cycle
/// starts, and how many windows of its chunk this rank has taken in that cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    pub cursor: u64,
    /// Absent from checkpoints of before chunks, which were all saved between steps.
    #[serde(default)]
    pub taken: u64,
}

impl LoaderState {
    fn cycle_start(&self) -> Position {
        Position {
            epoch: self.epoch,
            cursor: self.cursor,
        }
    }
}

/// A place in the stream: an epoch, and an index into its order below its window count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    epoch: u64,
    cursor: u64,
}

/// A window: shard index and first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub shard: u32,
    pub start: u64,
}

pub struct Loader {
    shards: Vec<Mmap>,
    seq_len: usize,
    seed: u64,
    share: Share,
    state: LoaderState,
    /// The window this rank reads next.
    next: Position,
    /// The epoch of `next`, whose windows and order are held.
    loaded_epoch: u64,
    /// The loaded epoch's windows, in file order.
    windows: Vec<Window>,
    /// The loaded epoch's permutation of window indices.
    order: Vec<u32>,
}

impl Loader {
    pub fn open(
        paths: &[PathBuf],
        seq_len: usize,
        seed: u64,
        share: Share,
    ) -> Result<Loader, LoaderError> {
        let Share { rank, world, chunk } = share;
        let cycle = world.checked_mul(chunk);
        if !cycle.is_some_and(|cycle| (1..=MAX_CYCLE).contains(&cycle)) {
            return Err(LoaderError::BadShare { world, chunk });
        }
        if rank >= world {
            return Err(LoaderError::BadRank { rank, world });
        }
        let shards = paths
            .iter()
            .map(|path| map_shard(path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut loader = Loader {
            shards,
            seq_len,
            seed,
            share,
            state: LoaderState {
                epoch: 0,
                cursor: 0,
                taken: 0,
            },
            next: Position {
                epoch: 0,
                cursor: 0,
            },
            loaded_epoch: 0,
            windows: Vec::new(),
            order: Vec::new(),
        };
        loader.load(0);
        if loader.windows.is_empty() {
            return Err(LoaderError::TooShort {
                window: seq_len + 1,
                tokens: loader.shards.iter().map(|s| s.len() / 2).sum(),
            });
        }
        let first = loader.advance(loader.next, loader.chunk_offset());
        loader.move_to(first);
        Ok(loader)
    }

    /// Windows of `seq_len + 1` tokens starting every `seq_len` tokens from `offset`: each token
    /// after the offset is a target once, and the last token of a window is the first input of
    /// the next.
    fn cut(&self, offset: usize) -> Vec<Window> {
        let mut windows = Vec::new();
        for (index, shard) in self.shards.iter().enumerate() {
            let count = windows_in_shard(shard.len() / 2, offset, self.seq_len);
            windows.extend((0..count).map(|i| Window {
                shard: index as u32,
                start: (offset + i * self.seq_len) as u64,
            }));
        }
        windows
    }

    /// How many windows [`Loader::cut`] makes at `offset`, without making them.
    fn count_windows(&self, offset: usize) -> usize {
        self.shards
            .iter()
            .map(|shard| windows_in_shard(shard.len() / 2, offset, self.seq_len))
            .sum()
    }

    /// The offset epoch `epoch` cuts at and its window count: its seeded offset, or 0 where
    /// that leaves no window (shards barely longer than a window have none at some offsets).
    fn epoch_cut(&self, epoch: u64) -> (usize, usize) {
        let offset = self.epoch_offset(epoch);
        match self.count_windows(offset) {
            0 => (0, self.count_windows(0)),
            windows => (offset, windows),
        }
    }

    /// Where epoch `epoch` would cut the shards: 0 for the first, a seeded offset after.
    fn epoch_offset(&self, epoch: u64) -> usize {
        if epoch == 0 {
            return 0;
        }
        let mut rng = Rng::new(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0FF5E7);
        rng.below(self.seq_len as u64) as usize
    }

    /// Windows in epoch `epoch`, over all ranks; every epoch has at least one.
    pub fn windows_in_epoch(&self, epoch: u64) -> usize {
        if epoch == self.loaded_epoch {
            return self.windows.len();
        }
        self.epoch_cut(epoch).1
    }

    /// Windows in the epoch this rank reads next, over all ranks.
    pub fn windows_per_epoch(&self) -> usize {
        self.windows.len()
    }

    /// The windows of the epoch this rank reads next in file order, regardless of the shuffle.
    pub fn windows_in_file_order(&self) -> Vec<Window> {
        self.windows.clone()
    }

    pub fn share(&self) -> Share {
        self.share
    }

    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continues from a saved position, which must be one of these shards' with a chunk taken
    /// no further than this share's chunk. A state saved between steps restores under any share:
    /// every rank goes on with its part of the same stream from that cycle start.
    pub fn restore(&mut self, state: LoaderState) -> Result<(), LoaderError> {
        let windows = self.windows_in_epoch(state.epoch) as u64;
        let chunk = self.share.chunk;
        if state.cursor >= windows || state.taken >= chunk as u64 {
            return Err(LoaderError::BadState {
                epoch: state.epoch,
                cursor: state.cursor,
                taken: state.taken,
                windows,
                chunk,
            });
        }
        self.state = state;
        let next = self.advance(state.cycle_start(), self.chunk_offset() + state.taken);
        self.move_to(next);
        Ok(())
    }

    /// Where this rank's chunk starts in a cycle.
    fn chunk_offset(&self) -> u64 {
        (self.share.rank * self.share.chunk) as u64
    }

    /// The position `n` windows after `from`, over the lengths of the epochs in between.
    fn advance(&self, from: Position, n: u64) -> Position {
        let Position {
            mut epoch,
            mut cursor,
        } = from;
        let mut remaining = n;
        loop {
            let left = self.windows_in_epoch(epoch) as u64 - cursor;
            if remaining < left {
                return Position {
                    epoch,
                    cursor: cursor + remaining,
                };
            }
            remaining -= left;
            // Epochs only seed the order, so a restored count at the limit may wrap.
            epoch = epoch.wrapping_add(1);
            cursor = 0;
        }
    }

    /// Makes `next` the window read next, cutting and shuffling its epoch if it is another.
    fn move_to(&mut self, next: Position) {
        self.next = next;
        if next.epoch != self.loaded_epoch {
            self.load(next.epoch);
        }
    }

    /// Cuts epoch `epoch`'s windows and draws its order.
    fn load(&mut self, epoch: u64) {
        self.windows = self.cut(self.epoch_cut(epoch).0);
        let mut rng = Rng::new(self.seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
        self.order = (0..self.windows.len() as u32).collect();
        for i in (1..self.order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            self.order.swap(i, j);
        }
        self.loaded_epoch = epoch;
    }

    /// The next window of this rank. After the last one of its chunk the loader moves to the
    /// next cycle, so between steps the state has no chunk taken and is the same on every rank.
    pub fn next_window(&mut self) -> Window {
        let window = self.windows[self.order[self.next.cursor as usize] as usize];
        self.state.taken += 1;
        let next = if self.state.taken == self.share.chunk as u64 {
            let cycle = (self.share.world * self.share.chunk) as u64;
            let start = self.advance(self.state.cycle_start(), cycle);
            self.state = LoaderState {
                epoch: start.epoch,
                cursor: start.cursor,
                taken: 0,
            };
            self.advance(start, self.chunk_offset())
        } else {
            self.advance(self.next, 1)
        };
        self.move_to(next);
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

/// Windows a shard of `tokens` tokens holds when cut every `seq_len` tokens from `offset`.
fn windows_in_shard(tokens: usize, offset: usize, seq_len: usize) -> usize {
    tokens.saturating_sub(1 + offset) / seq_len
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

    fn share(rank: usize, world: usize, chunk: usize) -> Share {
        Share { rank, world, chunk }
    }

    fn take(loader: &mut Loader, n: usize) -> Vec<Window> {
        (0..n).map(|_| loader.next_window()).collect()
    }

    /// The ranks' chunks, taken in turn, `n` windows in all.
    fn interleave(ranks: &mut [Loader], n: usize) -> Vec<Window> {
        let mut windows = Vec::new();
        while windows.len() < n {
            for rank in ranks.iter_mut() {
                let chunk = rank.share().chunk;
                windows.extend(take(rank, chunk));
            }
        }
        windows.truncate(n);
        windows
    }

    #[test]
    fn each_epoch_visits_every_window_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[100, 57, 9]);
        let mut loader = Loader::open(&paths, 8, 3, Share::single()).unwrap();
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

    /// The single stream as it was before shares: checkpoints saved then keep their meaning.
    #[test]
    fn the_single_stream_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[40, 21]);
        let mut loader = Loader::open(&paths, 8, 9, Share::single()).unwrap();
        // Each epoch's windows as shard:start; the later ones cut elsewhere, two with fewer.
        let expected = [
            "0:24 1:0 0:16 1:8 0:8 0:0",
            "0:23 0:31 1:7 0:15 0:7",
            "0:11 1:11 0:3 1:3 0:27 0:19",
            "1:0 0:0 0:24 0:8 1:8 0:16",
            "1:6 0:22 0:6 0:14 0:30",
        ];
        for (epoch, expected) in expected.into_iter().enumerate() {
            let n = loader.windows_per_epoch();
            let read: Vec<String> = take(&mut loader, n)
                .into_iter()
                .map(|w| format!("{}:{}", w.shard, w.start))
                .collect();
            assert_eq!(read.join(" "), expected, "epoch {epoch}");
        }
        let after = LoaderState {
            epoch: 5,
            cursor: 0,
            taken: 0,
        };
        assert_eq!(loader.state(), after);
        // Epochs 4 and 5 draw offsets that leave this shard no window, and cut at 0 instead.
        let paths = shards(dir.path(), &[12]);
        let mut loader = Loader::open(&paths, 8, 4, Share::single()).unwrap();
        let starts: Vec<u64> = take(&mut loader, 6).into_iter().map(|w| w.start).collect();
        assert_eq!(starts, [0, 0, 2, 3, 0, 0]);
    }

    #[test]
    fn ranks_taking_chunks_in_turn_read_the_single_stream() {
        let dir = tempfile::tempdir().unwrap();
        // Shards this short lose windows at some cut offsets, so epochs differ in length.
        let paths = shards(dir.path(), &[100, 57, 9]);
        let mut single = Loader::open(&paths, 8, 3, Share::single()).unwrap();
        let lengths: Vec<usize> = (0..6).map(|e| single.windows_in_epoch(e)).collect();
        assert!(lengths.iter().any(|&n| n != lengths[0]), "{lengths:?}");
        let total = lengths.iter().sum();
        let stream = take(&mut single, total);
        assert_eq!(single.state().epoch, 6);
        for (world, chunk) in [(2, 1), (2, 3), (2, 7), (3, 4)] {
            let mut ranks: Vec<Loader> = (0..world)
                .map(|rank| Loader::open(&paths, 8, 3, share(rank, world, chunk)).unwrap())
                .collect();
            let read = interleave(&mut ranks, total);
            assert_eq!(read, stream, "world {world}, chunk {chunk}");
        }
    }

    #[test]
    fn ranks_are_disjoint_and_cover_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[300, 121]);
        let epoch: HashSet<Window> = Loader::open(&paths, 8, 11, Share::single())
            .unwrap()
            .windows_in_file_order()
            .into_iter()
            .collect();
        assert_eq!(epoch.len(), 52);
        for (world, chunk) in [(2, 2), (2, 13), (4, 1)] {
            let mut all = HashSet::new();
            let mut total = 0;
            for rank in 0..world {
                let mut loader = Loader::open(&paths, 8, 11, share(rank, world, chunk)).unwrap();
                let windows = take(&mut loader, epoch.len() / world);
                let next_epoch = LoaderState {
                    epoch: 1,
                    cursor: 0,
                    taken: 0,
                };
                assert_eq!(loader.state(), next_epoch);
                total += windows.len();
                all.extend(windows);
            }
            assert_eq!(total, epoch.len(), "world {world}, chunk {chunk}");
            assert_eq!(all, epoch, "world {world}, chunk {chunk}");
        }
    }

    #[test]
    fn ranks_agree_between_steps_and_each_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[100, 57, 9]);
        let open = |rank| Loader::open(&paths, 8, 3, share(rank, 2, 3)).unwrap();
        let mut ranks = [open(0), open(1)];
        for _ in 0..9 {
            for rank in &mut ranks {
                take(rank, 3);
            }
            assert_eq!(ranks[0].state(), ranks[1].state());
            assert_eq!(ranks[0].state().taken, 0);
        }
        let saved = ranks[0].state();
        assert!(saved.epoch >= 2, "{saved:?}");
        for (rank, straight) in ranks.iter_mut().enumerate() {
            let expected = take(straight, 40);
            let mut resumed = open(rank);
            resumed.restore(saved).unwrap();
            assert_eq!(take(&mut resumed, 40), expected, "rank {rank}");
        }

        // Mid-chunk, the state is the rank's own and restores that rank exactly.
        let mut straight = open(1);
        take(&mut straight, 3 * 5 + 2);
        let saved = straight.state();
        assert_eq!(saved.taken, 2);
        let expected = take(&mut straight, 40);
        let mut resumed = open(1);
        resumed.restore(saved).unwrap();
        assert_eq!(resumed.state(), saved);
        assert_eq!(take(&mut resumed, 40), expected);
    }

    #[test]
    fn a_state_restores_under_another_world_size_and_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[100, 57, 9]);
        let open = |share| Loader::open(&paths, 8, 3, share).unwrap();
        let mut whole = open(share(0, 1, 4));
        take(&mut whole, 4 * 6);
        let saved = whole.state();
        assert_eq!((saved.epoch, saved.taken), (1, 0));
        let expected = take(&mut whole, 4 * 20);

        let mut halves = [open(share(0, 2, 2)), open(share(1, 2, 2))];
        for half in &mut halves {
            half.restore(saved).unwrap();
        }
        assert_eq!(interleave(&mut halves, expected.len()), expected);

        // And back: world 2's state between steps resumes one process there.
        let saved = halves[0].state();
        assert_eq!(saved, halves[1].state());
        let expected = interleave(&mut halves, 50);
        let mut single = open(Share::single());
        single.restore(saved).unwrap();
        assert_eq!(take(&mut single, 50), expected);
    }

    #[test]
    fn a_state_saved_before_chunks_still_loads() {
        let state: LoaderState = serde_json::from_str(r#"{"epoch":3,"cursor":5}"#).unwrap();
        let expected = LoaderState {
            epoch: 3,
            cursor: 5,
            taken: 0,
        };
        assert_eq!(state, expected);
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
        let mut straight = Loader::open(&paths, 16, 5, Share::single()).unwrap();
        batches(&mut straight, 7);
        let saved = straight.state();
        let expected = batches(&mut straight, 100);

        let mut resumed = Loader::open(&paths, 16, 5, Share::single()).unwrap();
        resumed.restore(saved).unwrap();
        assert_eq!(batches(&mut resumed, 100), expected);
        // Targets are the inputs shifted by one.
        let (x, y) = &expected[0];
        assert_eq!(&x[1..16], &y[..15]);
    }

    #[test]
    fn bad_shares_and_states_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), &[300, 121]);
        for (world, chunk) in [(0, 1), (1, 0), (usize::MAX, 2), (1 << 16, 1 << 16)] {
            let error = Loader::open(&paths, 8, 11, share(0, world, chunk)).err();
            assert!(
                matches!(error, Some(LoaderError::BadShare { .. })),
                "world {world}, chunk {chunk}: {error:?}"
            );
        }
        assert!(matches!(
            Loader::open(&paths, 8, 11, share(2, 2, 1)),
            Err(LoaderError::BadRank { .. })
        ));

        let mut loader = Loader::open(&paths, 8, 11, share(1, 2, 3)).unwrap();
        let first = Loader::open(&paths, 8, 11, share(1, 2, 3))
            .unwrap()
            .next_window();
        let at = |cursor, taken| LoaderState {
            epoch: 0,
            cursor,
            taken,
        };
        for bad in [at(0, 3), at(52, 0), at(u64::MAX, u64::MAX)] {
            let error = loader.restore(bad).unwrap_err();
            assert!(matches!(error, LoaderError::BadState { .. }), "{error}");
            assert!(error.to_string().contains("is past the end"), "{error}");
        }
        // A refused state leaves the loader where it was.
        assert_eq!(loader.state(), at(0, 0));
        assert_eq!(loader.next_window(), first);
        loader.restore(at(51, 2)).unwrap();
    }

    #[test]
    fn bad_shards_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("odd.bin");
        std::fs::write(&odd, [1u8, 2, 3]).unwrap();
        let err = Loader::open(&[odd], 4, 0, Share::single())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("3 bytes is not a whole number"), "{err}");
        let short = shards(dir.path(), &[4]);
        assert!(matches!(
            Loader::open(&short, 8, 0, Share::single()),
            Err(LoaderError::TooShort { .. })
        ));
    }
}
