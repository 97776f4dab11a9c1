//! Checks a pickle before candle's parser builds it: its nesting depth, simulated opcode by opcode.
//!
//! The parser builds nested values recursively, and dropping them recurses too, so a pickle of a few
//! hundred kilobytes that nests lists 200,000 deep overflows the stack and aborts the process. Here
//! every stack item carries only its depth (a scalar 0, a container one more than the deepest item it
//! holds); a pickle deeper than [`MAX_DEPTH`], malformed (an item popped that is not there), or with an
//! opcode outside protocol 5 is refused before anything is built.
use std::collections::HashMap;

/// Deepest nesting accepted. PyTorch checkpoints nest a handful of levels (a dict of dicts of
/// `_rebuild_tensor_v2` calls on tuples).
pub(crate) const MAX_DEPTH: u32 = 256;

/// The pickle's simulated stack: depths of items, and the stack heights at the open marks.
struct Sim {
    stack: Vec<u32>,
    marks: Vec<usize>,
    memo: HashMap<u64, u32>,
    at: usize,
}

impl Sim {
    fn pop(&mut self) -> Result<u32, String> {
        self.stack.pop().ok_or_else(|| format!("malformed pickle: an empty stack is popped at byte {}", self.at))
    }

    /// Pops back to the last mark; returns the deepest item popped.
    fn pop_mark(&mut self) -> Result<u32, String> {
        let mark = self.marks.pop().ok_or_else(|| format!("malformed pickle: no mark to pop at byte {}", self.at))?;
        if mark > self.stack.len() {
            return Err(format!("malformed pickle: a mark above the stack at byte {}", self.at));
        }
        Ok(self.stack.drain(mark..).max().unwrap_or(0))
    }

    fn push(&mut self, depth: u32) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("the pickle nests deeper than {MAX_DEPTH} levels (at byte {})", self.at));
        }
        self.stack.push(depth);
        Ok(())
    }

    /// Puts `depth` into the container on top of the stack.
    fn fill_top(&mut self, depth: u32) -> Result<(), String> {
        let top = self.pop()?;
        self.push(top.max(depth + 1))
    }

    fn top(&self) -> u32 {
        self.stack.last().copied().unwrap_or(0)
    }
}

/// Reads `n` little-endian bytes at `pos` as a length or memo index.
fn le(bytes: &[u8], pos: usize, n: usize) -> Result<u64, String> {
    let b = bytes.get(pos..pos + n).ok_or_else(|| format!("malformed pickle: truncated at byte {pos}"))?;
    Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// Position after the newline that ends the argument starting at `pos`.
fn line_end(bytes: &[u8], pos: usize) -> Result<usize, String> {
    bytes[pos.min(bytes.len())..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| pos + i + 1)
        .ok_or_else(|| format!("malformed pickle: unterminated line argument at byte {pos}"))
}

/// Skips a length-prefixed argument (`n` bytes of length, then the data).
fn counted(bytes: &[u8], pos: usize, n: usize) -> Result<usize, String> {
    let len = le(bytes, pos, n)?;
    let end = (pos + n).checked_add(usize::try_from(len).unwrap_or(usize::MAX));
    end.filter(|&e| e <= bytes.len())
        .ok_or_else(|| format!("malformed pickle: an argument of {len} bytes runs past the end at byte {pos}"))
}

/// `Ok` when the pickle is well formed and nests at most [`MAX_DEPTH`] levels; otherwise the reason.
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    let mut sim = Sim { stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), at: 0 };
    let mut pos = 0;
    while pos < bytes.len() {
        sim.at = pos;
        let op = bytes[pos];
        pos += 1;
        match op {
            b'.' => return Ok(()),
            // PROTO, FRAME: no stack effect.
            0x80 => pos += 1,
            0x95 => pos += 8,
            b'(' => sim.marks.push(sim.stack.len()),
            b'0' => {
                sim.pop()?;
            }
            b'1' => {
                sim.pop_mark()?;
            }
            b'2' => sim.push(sim.top())?,
            // Scalars with a newline-terminated argument.
            b'F' | b'I' | b'L' | b'S' | b'V' | b'P' => {
                pos = line_end(bytes, pos)?;
                sim.push(0)?;
            }
            // Scalars with fixed-size arguments or none.
            b'J' | b'K' | b'M' | b'G' | b'N' | 0x88 | 0x89 | 0x82 | 0x83 | 0x84 | 0x97 => {
                pos += match op {
                    b'J' | 0x84 => 4,
                    b'K' | 0x82 => 1,
                    b'M' | 0x83 => 2,
                    b'G' => 8,
                    _ => 0,
                };
                sim.push(0)?;
            }
            // Length-prefixed scalars: LONG1, SHORT_BINSTRING, SHORT_BINUNICODE, SHORT_BINBYTES (1 byte of
            // length); LONG4, BINSTRING, BINUNICODE, BINBYTES (4); BINUNICODE8, BINBYTES8, BYTEARRAY8 (8).
            0x8a | b'U' | 0x8c | b'C' => {
                pos = counted(bytes, pos, 1)?;
                sim.push(0)?;
            }
            0x8b | b'T' | b'X' | b'B' => {
                pos = counted(bytes, pos, 4)?;
                sim.push(0)?;
            }
            0x8d | 0x8e | 0x96 => {
                pos = counted(bytes, pos, 8)?;
                sim.push(0)?;
            }
            // GLOBAL: module and name lines.
            b'c' => {
                pos = line_end(bytes, line_end(bytes, pos)?)?;
                sim.push(0)?;
            }
            // Empty containers.
            b']' | b'}' | b')' | 0x8f => sim.push(1)?,
            // APPEND, SETITEM, BUILD: values into the item below them.
            b'a' | b'b' => {
                let v = sim.pop()?;
                sim.fill_top(v)?;
            }
            b's' => {
                let v = sim.pop()?.max(sim.pop()?);
                sim.fill_top(v)?;
            }
            // APPENDS, SETITEMS, ADDITEMS: the items since the mark into the container below it.
            b'e' | b'u' | 0x90 => {
                let v = sim.pop_mark()?;
                sim.fill_top(v)?;
            }
            // LIST, DICT, TUPLE, FROZENSET, OBJ: the items since the mark become one value.
            b'l' | b'd' | b't' | 0x91 | b'o' => {
                let v = sim.pop_mark()?;
                sim.push(v + 1)?;
            }
            // INST: module and name lines, then the items since the mark.
            b'i' => {
                pos = line_end(bytes, line_end(bytes, pos)?)?;
                let v = sim.pop_mark()?;
                sim.push(v + 1)?;
            }
            // TUPLE1..3, STACK_GLOBAL, REDUCE, NEWOBJ, NEWOBJ_EX, BINPERSID: pop some, push one.
            0x85 | 0x86 | 0x87 | 0x93 | b'R' | 0x81 | 0x92 | b'Q' => {
                let n = match op {
                    0x85 | b'Q' => 1,
                    0x86 | 0x93 | b'R' | 0x81 => 2,
                    _ => 3,
                };
                let mut v = 0;
                for _ in 0..n {
                    v = v.max(sim.pop()?);
                }
                sim.push(if op == 0x93 { 0 } else { v + 1 })?;
            }
            // READONLY_BUFFER: no stack effect.
            0x98 => {}
            // Memo: PUT and GET with a line, 1- or 4-byte index; MEMOIZE.
            b'p' | b'g' => {
                let end = line_end(bytes, pos)?;
                let key = std::str::from_utf8(&bytes[pos..end - 1]).ok().and_then(|s| s.trim().parse().ok());
                pos = end;
                memo(&mut sim, op == b'p', key.unwrap_or(u64::MAX))?;
            }
            b'q' | b'h' | b'r' | b'j' => {
                let n = if matches!(op, b'q' | b'h') { 1 } else { 4 };
                let key = le(bytes, pos, n)?;
                pos += n;
                memo(&mut sim, matches!(op, b'q' | b'r'), key)?;
            }
            0x94 => {
                let key = sim.memo.len() as u64;
                memo(&mut sim, true, key)?;
            }
            other => return Err(format!("unknown pickle opcode 0x{other:02x} at byte {}", pos - 1)),
        }
    }
    Err("malformed pickle: no STOP opcode".into())
}

/// A memo store (`put`) of the top item, or a fetch that pushes the stored depth.
fn memo(sim: &mut Sim, put: bool, key: u64) -> Result<(), String> {
    if put {
        let top = sim.top();
        sim.memo.insert(key, top);
        Ok(())
    } else {
        let depth = sim.memo.get(&key).copied().unwrap_or(0);
        sim.push(depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[[[...]]]` nested `n` deep, with protocol 2.
    fn nested_lists(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        p
    }

    #[test]
    fn deep_nesting_is_refused_and_shallow_nesting_passes() {
        assert!(check(&nested_lists(MAX_DEPTH as usize)).is_ok());
        let err = check(&nested_lists(200_000)).unwrap_err();
        assert!(err.contains("nests deeper"), "{err}");
        // Nesting through the memo: GET of a deep list into a new list, repeatedly.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..300 {
            p.extend([b']', b'h', 0, b'a', b'q', 0]);
        }
        p.push(b'.');
        assert!(check(&p).unwrap_err().contains("nests deeper"));
    }

    #[test]
    fn malformed_pickles_are_refused() {
        assert!(check(b"\x80\x02a.").unwrap_err().contains("empty stack"));
        assert!(check(b"\x80\x02X\xff\xff\xff\x7fab.").unwrap_err().contains("past the end"));
        assert!(check(b"\x80\x02]").unwrap_err().contains("no STOP"));
        assert!(check(b"\x80\x02\xff.").unwrap_err().contains("unknown pickle opcode 0xff"));
        assert!(check(b"\x80\x02e.").unwrap_err().contains("no mark"));
    }

    #[test]
    fn a_state_dict_pickle_passes() {
        // collections.OrderedDict() with one item, as torch.save writes it (protocol 2).
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aq\x02K\x01s.";
        assert!(check(p).is_ok());
    }
}
