//! Checks a pickle before candle's parser builds it, opcode by opcode: its nesting depth and the globals
//! it names.
//!
//! The parser builds nested values recursively, and dropping them recurses too, so a pickle of a few
//! hundred kilobytes that nests lists 200,000 deep overflows the stack and aborts the process. Here
//! every stack item carries only its depth (a scalar 0, a container one more than the deepest item it
//! holds); a pickle deeper than [`MAX_DEPTH`], malformed (an item popped that is not there), or with an
//! opcode outside protocol 5 is refused before anything is built. So is a pickle that names a global
//! outside the allow-list of [`allowed_global`] (as PyTorch's `weights_only` loading refuses them), with
//! the global's name: candle never calls one, but a file that names `os.system` is not a checkpoint.
use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting accepted. PyTorch checkpoints nest a handful of levels (a dict of dicts of
/// `_rebuild_tensor_v2` calls on tuples).
pub(crate) const MAX_DEPTH: u32 = 256;

/// A simulated stack item: its nesting depth, and its text when it is a string (for `STACK_GLOBAL`).
#[derive(Clone, Default)]
struct Item {
    depth: u32,
    text: Option<Rc<str>>,
}

/// The pickle's simulated stack: its items, and the stack heights at the open marks.
struct Sim {
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u64, Item>,
    at: usize,
}

impl Sim {
    fn pop_item(&mut self) -> Result<Item, String> {
        self.stack.pop().ok_or_else(|| format!("malformed pickle: an empty stack is popped at byte {}", self.at))
    }

    fn pop(&mut self) -> Result<u32, String> {
        Ok(self.pop_item()?.depth)
    }

    /// Pops back to the last mark; returns the deepest item popped.
    fn pop_mark(&mut self) -> Result<u32, String> {
        let mark = self.marks.pop().ok_or_else(|| format!("malformed pickle: no mark to pop at byte {}", self.at))?;
        if mark > self.stack.len() {
            return Err(format!("malformed pickle: a mark above the stack at byte {}", self.at));
        }
        Ok(self.stack.drain(mark..).map(|item| item.depth).max().unwrap_or(0))
    }

    fn push_item(&mut self, item: Item) -> Result<(), String> {
        if item.depth > MAX_DEPTH {
            return Err(format!("the pickle nests deeper than {MAX_DEPTH} levels (at byte {})", self.at));
        }
        self.stack.push(item);
        Ok(())
    }

    fn push(&mut self, depth: u32) -> Result<(), String> {
        self.push_item(Item { depth, text: None })
    }

    /// Puts `depth` into the container on top of the stack.
    fn fill_top(&mut self, depth: u32) -> Result<(), String> {
        let top = self.pop()?;
        self.push(top.max(depth + 1))
    }

    fn top(&self) -> Item {
        self.stack.last().cloned().unwrap_or_default()
    }
}

/// The callables and classes a checkpoint's pickle may name: tensor and storage rebuilding, the
/// containers and numeric types `torch.save` writes, and TorchScript's own classes (`__torch__.*`, which
/// name compiled modules, not Python code).
fn allowed_global(module: &str, name: &str) -> bool {
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => name.starts_with("_rebuild_"),
        "torch" => {
            name.ends_with("Storage")
                || ["Size", "device"].contains(&name)
                || ["float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool"]
                    .contains(&name)
        }
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch.serialization" => name == "_get_layout",
        "torch.storage" => name == "UntypedStorage",
        "torch.nn.parameter" => name == "Parameter",
        "torch.jit._pickle" => name.starts_with("build_") || name == "restore_type_tag",
        "builtins" => ["set", "frozenset", "complex"].contains(&name),
        "numpy" => name == "dtype",
        "numpy.core.multiarray" | "numpy._core.multiarray" => name == "scalar",
        "_codecs" => name == "encode",
        m => m == "__torch__" || m.starts_with("__torch__."),
    }
}

/// Refuses a global outside [`allowed_global`], naming it.
fn check_global(module: &str, name: &str, at: usize) -> Result<(), String> {
    if allowed_global(module, name) {
        Ok(())
    } else {
        Err(format!(
            "the pickle names the global `{module}.{name}` (at byte {at}), which is none of the tensor, storage, \
             container and numeric types a checkpoint holds"
        ))
    }
}

/// The text of a newline-terminated argument at `pos` and the position after it.
fn line(bytes: &[u8], pos: usize) -> Result<(String, usize), String> {
    let end = line_end(bytes, pos)?;
    Ok((String::from_utf8_lossy(&bytes[pos..end - 1]).trim().to_string(), end))
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
            b'2' => sim.push_item(sim.top())?,
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
            0x8a | b'U' | 0x8c | b'C' | 0x8b | b'T' | b'X' | b'B' | 0x8d | 0x8e | 0x96 => {
                let n = match op {
                    0x8a | b'U' | 0x8c | b'C' => 1,
                    0x8b | b'T' | b'X' | b'B' => 4,
                    _ => 8,
                };
                let end = counted(bytes, pos, n)?;
                // candle decodes LONG1 into an i64 by shifting each byte into place: more than 8 bytes
                // would shift past its width.
                if matches!(op, 0x8a | 0x8b) && end - pos - n > 8 {
                    return Err(format!("the pickle holds an integer wider than 64 bits at byte {}", pos - 1));
                }
                let text = matches!(op, 0x8c | b'X' | 0x8d | b'U' | b'T')
                    .then(|| Rc::from(String::from_utf8_lossy(&bytes[pos + n..end]).as_ref()));
                pos = end;
                sim.push_item(Item { depth: 0, text })?;
            }
            // GLOBAL: module and name lines.
            b'c' => {
                let (module, after) = line(bytes, pos)?;
                let (name, after) = line(bytes, after)?;
                check_global(&module, &name, pos - 1)?;
                pos = after;
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
                let (module, after) = line(bytes, pos)?;
                let (name, after) = line(bytes, after)?;
                check_global(&module, &name, pos - 1)?;
                pos = after;
                let v = sim.pop_mark()?;
                sim.push(v + 1)?;
            }
            // STACK_GLOBAL: module and name strings from the stack.
            0x93 => {
                let (name, module) = (sim.pop_item()?.text, sim.pop_item()?.text);
                let (Some(module), Some(name)) = (module, name) else {
                    return Err(format!("malformed pickle: STACK_GLOBAL without two strings at byte {}", pos - 1));
                };
                check_global(&module, &name, pos - 1)?;
                sim.push(0)?;
            }
            // TUPLE1..3, REDUCE, NEWOBJ, NEWOBJ_EX, BINPERSID: pop some, push one.
            0x85 | 0x86 | 0x87 | b'R' | 0x81 | 0x92 | b'Q' => {
                let n = match op {
                    0x85 | b'Q' => 1,
                    0x86 | b'R' | 0x81 => 2,
                    _ => 3,
                };
                let mut v = 0;
                for _ in 0..n {
                    v = v.max(sim.pop()?);
                }
                sim.push(v + 1)?;
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

/// A memo store (`put`) of the top item, or a fetch that pushes the stored item.
fn memo(sim: &mut Sim, put: bool, key: u64) -> Result<(), String> {
    if put {
        let top = sim.top();
        sim.memo.insert(key, top);
        Ok(())
    } else {
        let item = sim.memo.get(&key).cloned().unwrap_or_default();
        sim.push_item(item)
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
        assert!(check(b"\x80\x02\x8a\x08\x01\x02\x03\x04\x05\x06\x07\x08.").is_ok());
        assert!(check(b"\x80\x02\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09.")
            .unwrap_err()
            .contains("wider than 64 bits"));
    }

    #[test]
    fn globals_outside_the_allow_list_are_refused_by_name() {
        // `os.system("true")` through GLOBAL and REDUCE, protocol 2.
        let err = check(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.").unwrap_err();
        assert!(err.contains("`os.system`"), "{err}");
        // Protocol 4: STACK_GLOBAL over memoized strings.
        let stack_global = |module: &[u8], name: &[u8]| {
            let mut p = vec![0x80, 4, 0x8c, module.len() as u8];
            p.extend(module);
            p.extend([0x94, 0x8c, name.len() as u8]);
            p.extend(name);
            p.extend([0x94, 0x93, 0x94, b')', b'R', b'.']);
            p
        };
        assert!(check(&stack_global(b"torch._utils", b"_rebuild_tensor_v2")).is_ok());
        assert!(check(&stack_global(b"builtins", b"eval")).unwrap_err().contains("`builtins.eval`"));
        // The module string fetched back from the memo still names the global.
        let mut p = vec![0x80, 4, 0x8c, 8];
        p.extend(b"builtins");
        p.extend([0x94, b'0', b'h', 0, 0x8c, 4]);
        p.extend(b"exec");
        p.extend([0x93, b')', b'R', b'.']);
        assert!(check(&p).unwrap_err().contains("`builtins.exec`"));
        assert!(check(b"\x80\x02c__torch__.model\nCLIP\n).").is_ok());
    }

    #[test]
    fn a_state_dict_pickle_passes() {
        // collections.OrderedDict() with one item, as torch.save writes it (protocol 2).
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aq\x02K\x01s.";
        assert!(check(p).is_ok());
    }
}
