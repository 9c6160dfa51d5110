//! Converts a Whisper model from CTranslate2's `model.bin` into whisper.cpp's
//! legacy ggml file, the layout whisper.cpp's own `convert-pt-to-ggml.py`
//! writes, so the set-up needs no Python and no PyTorch.
//!
//! Input: the CT2 `model.bin` (binary version 6: `u32 version`, spec name,
//! `u32 revision`, `u32 n_vars`, then per variable `{name, u8 rank,
//! u32 dims[rank], u8 dtype, u32 nbytes, data}`, then aliases; strings are
//! `u16 len` (counting a trailing NUL) + bytes), the Hugging Face
//! `tokenizer.json` of the same model, and openai-whisper's `mel_filters.npz`.
//!
//! Output: magic `0x67676d6c`, 11 `i32` hyper-parameters (ftype 1 = f16), the
//! mel filter bank (`i32 n_mel, i32 n_fft`, f32 values), the byte-level
//! vocabulary (`i32 n`, then `i32 len` + raw bytes per token), then tensors
//! `{i32 n_dims, i32 name_len, i32 ftype, i32 dims[n_dims] (reversed),
//! name, data}` under openai-whisper's names, in declaration order.
//!
//! # Invariants
//! 1. Tensors are written in openai-whisper's declaration order (see `plan`),
//!    so the output is byte-for-byte reproducible and its sha256 can be pinned.
//! 2. 2-D and 3-D weights are f16; 1-D tensors, the conv biases (reshaped to
//!    `[n, 1]`) and both positional embeddings are f32, exactly as
//!    `convert-pt-to-ggml.py` does.
//! 3. CT2 fuses projections: encoder/decoder self-attention `linear_0` is
//!    `[Q; K; V]` (split in thirds), cross-attention `linear_1` is `[K; V]`
//!    (split in halves). Keys have no bias in Whisper; the key third/half of
//!    a fused bias is dropped.
//! 4. The vocabulary written is the tokenizer's BPE vocabulary without the
//!    added (special) tokens, ids `0..n` contiguous, decoded from GPT-2's
//!    byte-to-unicode alphabet back to raw bytes; whisper.cpp derives the
//!    special tokens from `n_vocab` itself.
//! 5. Bad input never panics: every read is bounds-checked and reported as a
//!    [`ConvertError`] naming the variable or field.

use std::collections::HashMap;
use std::io::{Read, Write};

use half::f16;

/// Why a conversion failed. None of these is fixed by retrying: the input
/// files are wrong (re-fetch them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The CT2 file is truncated or malformed.
    #[error("CTranslate2 model.bin: {0}")]
    Ct2(String),
    /// A variable the converter needs is missing or has the wrong shape.
    #[error("CTranslate2 variable {name}: {reason}")]
    Variable { name: String, reason: String },
    /// `tokenizer.json` is not a BPE tokenizer we understand.
    #[error("tokenizer.json: {0}")]
    Tokenizer(String),
    /// `mel_filters.npz` is unreadable or lacks the filter bank for the model.
    #[error("mel_filters.npz: {0}")]
    MelFilters(String),
    /// Writing the output failed.
    #[error("writing the ggml file: {0}")]
    Write(#[from] std::io::Error),
}

/// CT2 data types (ctranslate2 `DataType`).
const DT_F32: u8 = 0;
const DT_I8: u8 = 1;
const DT_I16: u8 = 2;
const DT_I32: u8 = 3;
const DT_F16: u8 = 4;

/// One CT2 variable, borrowing its data from the input buffer.
#[derive(Clone, Debug)]
pub struct Ct2Var<'a> {
    pub dims: Vec<usize>,
    pub dtype: u8,
    pub data: &'a [u8],
}

impl Ct2Var<'_> {
    fn n_elems(&self) -> usize {
        self.dims.iter().product()
    }

    /// The scalar value of an integer variable (`num_heads`).
    fn scalar_int(&self, name: &str) -> Result<i64, ConvertError> {
        let bad = |reason: &str| ConvertError::Variable {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        match (self.dtype, self.data) {
            (DT_I8, [a]) => Ok(i64::from(*a as i8)),
            (DT_I16, [a, b]) => Ok(i64::from(i16::from_le_bytes([*a, *b]))),
            (DT_I32, [a, b, c, d]) => Ok(i64::from(i32::from_le_bytes([*a, *b, *c, *d]))),
            _ => Err(bad("expected an integer scalar")),
        }
    }
}

/// A parsed CT2 model: spec name and variables by name (aliases resolved).
#[derive(Debug)]
pub struct Ct2Model<'a> {
    pub spec: String,
    pub vars: HashMap<String, Ct2Var<'a>>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ConvertError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(ConvertError::Ct2(format!(
                "truncated while reading {what} at byte {} (file has {} bytes)",
                self.pos,
                self.buf.len()
            ))),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8, ConvertError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, ConvertError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, ConvertError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, what: &str) -> Result<String, ConvertError> {
        let n = usize::from(self.u16(what)?);
        let b = self.take(n, what)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec()).map_err(|_| ConvertError::Ct2(format!("{what} is not UTF-8")))
    }
}

/// Parses a CT2 `model.bin` (binary version 6) held in memory.
pub fn parse_ct2(buf: &[u8]) -> Result<Ct2Model<'_>, ConvertError> {
    let mut c = Cursor { buf, pos: 0 };
    let version = c.u32("binary version")?;
    if version != 6 {
        return Err(ConvertError::Ct2(format!(
            "binary version {version} is not supported (expected 6)"
        )));
    }
    let spec = c.string("spec name")?;
    let _revision = c.u32("spec revision")?;
    let n_vars = c.u32("variable count")?;
    let mut vars = HashMap::new();
    for _ in 0..n_vars {
        let name = c.string("variable name")?;
        let rank = c.u8("rank")?;
        let mut dims = Vec::with_capacity(usize::from(rank));
        for _ in 0..rank {
            dims.push(c.u32("dimension")? as usize);
        }
        let dtype = c.u8("dtype")?;
        let nbytes = c.u32("byte count")? as usize;
        let data = c.take(nbytes, &format!("data of {name}"))?;
        let var = Ct2Var { dims, dtype, data };
        let elem = match dtype {
            DT_F32 | DT_I32 => 4,
            DT_F16 | DT_I16 | 5 => 2,
            DT_I8 => 1,
            other => {
                return Err(ConvertError::Variable {
                    name,
                    reason: format!("unknown dtype {other}"),
                })
            }
        };
        if var.n_elems().checked_mul(elem) != Some(nbytes) {
            return Err(ConvertError::Variable {
                name,
                reason: format!("{nbytes} bytes do not match shape {:?}", var.dims),
            });
        }
        vars.insert(name, var);
    }
    // Aliases are optional at the very end of the file.
    if c.pos < buf.len() {
        let n_alias = c.u32("alias count")?;
        for _ in 0..n_alias {
            let alias = c.string("alias name")?;
            let target = c.string("alias target")?;
            if let Some(v) = vars.get(&target).cloned() {
                vars.insert(alias, v);
            }
        }
    }
    Ok(Ct2Model { spec, vars })
}

/// GPT-2's byte-to-unicode table inverted: char → byte (invariant 4).
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.iter()
        .zip(cs)
        .filter_map(|(b, c)| Some((char::from_u32(c)?, u8::try_from(*b).ok()?)))
        .collect()
}

/// The byte strings of the regular (non-special) vocabulary, by id (invariant 4).
pub fn vocab_bytes(tokenizer_json: &[u8]) -> Result<Vec<Vec<u8>>, ConvertError> {
    let tok = |m: String| ConvertError::Tokenizer(m);
    let v: serde_json::Value =
        serde_json::from_slice(tokenizer_json).map_err(|e| tok(format!("not JSON: {e}")))?;
    let vocab = v
        .pointer("/model/vocab")
        .and_then(|x| x.as_object())
        .ok_or_else(|| tok("no model.vocab object".into()))?;
    let special: std::collections::HashSet<&str> = v
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|t| t.get("content").and_then(|c| c.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut by_id: Vec<(u64, &str)> = Vec::with_capacity(vocab.len());
    for (s, id) in vocab {
        if special.contains(s.as_str()) {
            continue;
        }
        let id = id
            .as_u64()
            .ok_or_else(|| tok(format!("token {s:?} has a non-integer id")))?;
        by_id.push((id, s));
    }
    by_id.sort_unstable();
    let map = unicode_to_byte();
    let mut out = Vec::with_capacity(by_id.len());
    for (i, (id, s)) in by_id.iter().enumerate() {
        if *id != i as u64 {
            return Err(tok(format!(
                "regular token ids are not contiguous: expected id {i}, found {id} ({s:?})"
            )));
        }
        let bytes: Option<Vec<u8>> = s.chars().map(|ch| map.get(&ch).copied()).collect();
        out.push(bytes.ok_or_else(|| tok(format!("token {s:?} is not byte-level BPE")))?);
    }
    Ok(out)
}

/// Reads `mel_<n_mels>.npy` (little-endian f32, C order, 2-D) from the npz.
pub fn mel_filters(npz: &[u8], n_mels: usize) -> Result<(usize, usize, Vec<f32>), ConvertError> {
    let mel = |m: String| ConvertError::MelFilters(m);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(npz))
        .map_err(|e| mel(format!("not a zip archive: {e}")))?;
    let member = format!("mel_{n_mels}.npy");
    let mut f = zip
        .by_name(&member)
        .map_err(|e| mel(format!("no {member}: {e}")))?;
    let mut npy = Vec::new();
    f.read_to_end(&mut npy)
        .map_err(|e| mel(format!("reading {member}: {e}")))?;
    if npy.len() < 10 || &npy[..6] != b"\x93NUMPY" {
        return Err(mel(format!("{member} is not a .npy file")));
    }
    let (hlen, hstart) = match npy[6] {
        1 => (usize::from(u16::from_le_bytes([npy[8], npy[9]])), 10),
        2 | 3 if npy.len() >= 12 => (
            u32::from_le_bytes([npy[8], npy[9], npy[10], npy[11]]) as usize,
            12,
        ),
        v => return Err(mel(format!("{member}: unsupported .npy version {v}"))),
    };
    let header = npy
        .get(hstart..hstart + hlen)
        .ok_or_else(|| mel(format!("{member}: truncated header")))?;
    let header = String::from_utf8_lossy(header);
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        return Err(mel(format!(
            "{member}: expected little-endian f32 in C order, header {header}"
        )));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| mel(format!("{member}: no shape in header")))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| mel(format!("{member}: bad shape ({shape})")))?;
    let [rows, cols] = dims[..] else {
        return Err(mel(format!("{member}: expected 2-D, shape ({shape})")));
    };
    let data = &npy[hstart + hlen..];
    if data.len() != rows * cols * 4 {
        return Err(mel(format!(
            "{member}: {} data bytes for shape ({rows}, {cols})",
            data.len()
        )));
    }
    let vals = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((rows, cols, vals))
}

/// One output tensor: name, shape (PyTorch order), data source and format.
struct OutTensor<'a> {
    name: String,
    shape: Vec<usize>,
    var: &'a Ct2Var<'a>,
    /// Element range of `var` this tensor takes (splitting fused projections).
    range: std::ops::Range<usize>,
    f32: bool,
}

/// Hyper-parameters derived from the CT2 variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
    pub n_mels: usize,
}

fn var<'m, 'a>(m: &'m Ct2Model<'a>, name: &str) -> Result<&'m Ct2Var<'a>, ConvertError> {
    m.vars.get(name).ok_or_else(|| ConvertError::Variable {
        name: name.to_string(),
        reason: "missing".into(),
    })
}

fn dim(m: &Ct2Model<'_>, name: &str, axis: usize) -> Result<usize, ConvertError> {
    var(m, name)?
        .dims
        .get(axis)
        .copied()
        .ok_or_else(|| ConvertError::Variable {
            name: name.to_string(),
            reason: format!("has no axis {axis}"),
        })
}

fn count_layers(m: &Ct2Model<'_>, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            m.vars
                .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
        })
        .count()
}

/// Reads the hyper-parameters from the CT2 variables.
pub fn hparams(m: &Ct2Model<'_>) -> Result<Hparams, ConvertError> {
    let heads = |n: &str| -> Result<usize, ConvertError> {
        let h = var(m, n)?.scalar_int(n)?;
        usize::try_from(h).map_err(|_| ConvertError::Variable {
            name: n.to_string(),
            reason: format!("negative head count {h}"),
        })
    };
    Ok(Hparams {
        n_vocab: dim(m, "decoder/embeddings/weight", 0)?,
        n_audio_ctx: dim(m, "encoder/position_encodings/encodings", 0)?,
        n_audio_state: dim(m, "encoder/position_encodings/encodings", 1)?,
        n_audio_head: heads("encoder/num_heads")?,
        n_audio_layer: count_layers(m, "encoder"),
        n_text_ctx: dim(m, "decoder/position_encodings/encodings", 0)?,
        n_text_state: dim(m, "decoder/position_encodings/encodings", 1)?,
        n_text_head: heads("decoder/num_heads")?,
        n_text_layer: count_layers(m, "decoder"),
        n_mels: dim(m, "encoder/conv1/weight", 1)?,
    })
}

/// Builds the output tensor list (invariants 1–3).
struct Planner<'a> {
    m: &'a Ct2Model<'a>,
    out: Vec<OutTensor<'a>>,
}

impl<'a> Planner<'a> {
    /// A whole variable, optionally reshaped or forced to f32.
    fn whole(
        &mut self,
        name: String,
        src: &str,
        shape: Option<Vec<usize>>,
        force_f32: bool,
    ) -> Result<(), ConvertError> {
        let v = var(self.m, src)?;
        let shape = shape.unwrap_or_else(|| v.dims.clone());
        self.out.push(OutTensor {
            f32: force_f32 || shape.len() < 2,
            name,
            shape,
            range: 0..v.n_elems(),
            var: v,
        });
        Ok(())
    }

    /// Part `k` of `parts` of a fused projection, split along axis 0.
    fn part(
        &mut self,
        name: String,
        src: &str,
        k: usize,
        parts: usize,
    ) -> Result<(), ConvertError> {
        let v = var(self.m, src)?;
        let rows = v.dims.first().copied().unwrap_or(0);
        if rows == 0 || rows % parts != 0 {
            return Err(ConvertError::Variable {
                name: src.to_string(),
                reason: format!("cannot split {rows} rows into {parts} parts"),
            });
        }
        let per = v.n_elems() / parts;
        let mut shape = v.dims.clone();
        shape[0] = rows / parts;
        self.out.push(OutTensor {
            f32: shape.len() < 2,
            name,
            shape,
            range: k * per..(k + 1) * per,
            var: v,
        });
        Ok(())
    }

    fn linear(&mut self, dst: &str, src: &str) -> Result<(), ConvertError> {
        self.whole(
            format!("{dst}.weight"),
            &format!("{src}/weight"),
            None,
            false,
        )?;
        self.whole(format!("{dst}.bias"), &format!("{src}/bias"), None, false)
    }

    fn norm(&mut self, dst: &str, src: &str) -> Result<(), ConvertError> {
        self.whole(
            format!("{dst}.weight"),
            &format!("{src}/gamma"),
            None,
            false,
        )?;
        self.whole(format!("{dst}.bias"), &format!("{src}/beta"), None, false)
    }

    /// Self-attention from a fused [Q; K; V] (invariant 3).
    fn self_attn(&mut self, dst: &str, src: &str) -> Result<(), ConvertError> {
        let (w, b) = (
            format!("{src}/linear_0/weight"),
            format!("{src}/linear_0/bias"),
        );
        self.part(format!("{dst}.attn.query.weight"), &w, 0, 3)?;
        self.part(format!("{dst}.attn.query.bias"), &b, 0, 3)?;
        self.part(format!("{dst}.attn.key.weight"), &w, 1, 3)?;
        self.part(format!("{dst}.attn.value.weight"), &w, 2, 3)?;
        self.part(format!("{dst}.attn.value.bias"), &b, 2, 3)?;
        self.linear(&format!("{dst}.attn.out"), &format!("{src}/linear_1"))?;
        self.norm(&format!("{dst}.attn_ln"), &format!("{src}/layer_norm"))
    }

    /// Cross-attention: query, fused [K; V] (invariant 3), out.
    fn cross_attn(&mut self, dst: &str, src: &str) -> Result<(), ConvertError> {
        self.linear(
            &format!("{dst}.cross_attn.query"),
            &format!("{src}/linear_0"),
        )?;
        let (w, b) = (
            format!("{src}/linear_1/weight"),
            format!("{src}/linear_1/bias"),
        );
        self.part(format!("{dst}.cross_attn.key.weight"), &w, 0, 2)?;
        self.part(format!("{dst}.cross_attn.value.weight"), &w, 1, 2)?;
        self.part(format!("{dst}.cross_attn.value.bias"), &b, 1, 2)?;
        self.linear(&format!("{dst}.cross_attn.out"), &format!("{src}/linear_2"))?;
        self.norm(
            &format!("{dst}.cross_attn_ln"),
            &format!("{src}/layer_norm"),
        )
    }

    fn mlp(&mut self, dst: &str, src: &str) -> Result<(), ConvertError> {
        self.linear(&format!("{dst}.mlp.0"), &format!("{src}/linear_0"))?;
        self.linear(&format!("{dst}.mlp.2"), &format!("{src}/linear_1"))?;
        self.norm(&format!("{dst}.mlp_ln"), &format!("{src}/layer_norm"))
    }
}

/// Plans the output tensors (invariant 1): every module's tensors in the
/// order openai-whisper's `__init__` declares them (encoder: conv1, conv2,
/// positional embedding, blocks, ln_post; decoder: token embedding,
/// positional embedding, blocks, ln; per block: attn, attn_ln, cross_attn,
/// cross_attn_ln, mlp, mlp_ln). This order reproduces the pinned sha256.
fn plan<'a>(m: &'a Ct2Model<'a>, hp: &Hparams) -> Result<Vec<OutTensor<'a>>, ConvertError> {
    let mut p = Planner { m, out: Vec::new() };
    let pe = "position_encodings/encodings";
    for conv in ["conv1", "conv2"] {
        p.whole(
            format!("encoder.{conv}.weight"),
            &format!("encoder/{conv}/weight"),
            None,
            false,
        )?;
        let bias = format!("encoder/{conv}/bias");
        let n = dim(m, &bias, 0)?;
        p.whole(
            format!("encoder.{conv}.bias"),
            &bias,
            Some(vec![n, 1]),
            true,
        )?;
    }
    p.whole(
        "encoder.positional_embedding".into(),
        &format!("encoder/{pe}"),
        None,
        true,
    )?;
    for i in 0..hp.n_audio_layer {
        let (dst, src) = (format!("encoder.blocks.{i}"), format!("encoder/layer_{i}"));
        p.self_attn(&dst, &format!("{src}/self_attention"))?;
        p.mlp(&dst, &format!("{src}/ffn"))?;
    }
    p.norm("encoder.ln_post", "encoder/layer_norm")?;

    p.whole(
        "decoder.token_embedding.weight".into(),
        "decoder/embeddings/weight",
        None,
        false,
    )?;
    p.whole(
        "decoder.positional_embedding".into(),
        &format!("decoder/{pe}"),
        None,
        true,
    )?;
    for i in 0..hp.n_text_layer {
        let (dst, src) = (format!("decoder.blocks.{i}"), format!("decoder/layer_{i}"));
        p.self_attn(&dst, &format!("{src}/self_attention"))?;
        p.cross_attn(&dst, &format!("{src}/attention"))?;
        p.mlp(&dst, &format!("{src}/ffn"))?;
    }
    p.norm("decoder.ln", "decoder/layer_norm")?;
    Ok(p.out)
}

fn write_i32(w: &mut impl Write, v: usize) -> Result<(), ConvertError> {
    let v = i32::try_from(v)
        .map_err(|_| ConvertError::Ct2(format!("value {v} does not fit the ggml header")))?;
    w.write_all(&v.to_le_bytes())?;
    Ok(())
}

fn write_tensor(w: &mut impl Write, t: &OutTensor<'_>) -> Result<(), ConvertError> {
    let name = t.name.as_bytes();
    write_i32(w, t.shape.len())?;
    write_i32(w, name.len())?;
    write_i32(w, usize::from(!t.f32))?;
    for d in t.shape.iter().rev() {
        write_i32(w, *d)?;
    }
    w.write_all(name)?;
    let bad = || ConvertError::Variable {
        name: t.name.clone(),
        reason: format!("unsupported source dtype {}", t.var.dtype),
    };
    let mut buf = Vec::with_capacity(t.range.len() * 4);
    match (t.var.dtype, t.f32) {
        (DT_F16, false) => buf.extend_from_slice(&t.var.data[t.range.start * 2..t.range.end * 2]),
        (DT_F16, true) => {
            for b in t.var.data[t.range.start * 2..t.range.end * 2].chunks_exact(2) {
                let x = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        (DT_F32, true) => buf.extend_from_slice(&t.var.data[t.range.start * 4..t.range.end * 4]),
        (DT_F32, false) => {
            for b in t.var.data[t.range.start * 4..t.range.end * 4].chunks_exact(4) {
                let x = f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                buf.extend_from_slice(&x.to_bits().to_le_bytes());
            }
        }
        _ => return Err(bad()),
    }
    w.write_all(&buf)?;
    Ok(())
}

/// Converts CT2 `model.bin` + `tokenizer.json` + `mel_filters.npz` into a
/// whisper.cpp ggml file written to `out`. Returns the hyper-parameters.
pub fn convert(
    model_bin: &[u8],
    tokenizer_json: &[u8],
    mel_npz: &[u8],
    out: &mut impl Write,
) -> Result<Hparams, ConvertError> {
    let m = parse_ct2(model_bin)?;
    if m.spec != "WhisperSpec" {
        return Err(ConvertError::Ct2(format!(
            "spec {:?} is not a Whisper model (expected WhisperSpec)",
            m.spec
        )));
    }
    let hp = hparams(&m)?;
    let tensors = plan(&m, &hp)?;
    let tokens = vocab_bytes(tokenizer_json)?;
    let (rows, cols, filters) = mel_filters(mel_npz, hp.n_mels)?;

    out.write_all(&0x6767_6d6c_u32.to_le_bytes())?;
    for v in [
        hp.n_vocab,
        hp.n_audio_ctx,
        hp.n_audio_state,
        hp.n_audio_head,
        hp.n_audio_layer,
        hp.n_text_ctx,
        hp.n_text_state,
        hp.n_text_head,
        hp.n_text_layer,
        hp.n_mels,
        1, // ftype: f16 (invariant 2)
    ] {
        write_i32(out, v)?;
    }
    write_i32(out, rows)?;
    write_i32(out, cols)?;
    let mut fb = Vec::with_capacity(filters.len() * 4);
    for x in &filters {
        fb.extend_from_slice(&x.to_le_bytes());
    }
    out.write_all(&fb)?;
    write_i32(out, tokens.len())?;
    for t in &tokens {
        write_i32(out, t.len())?;
        out.write_all(t)?;
    }
    for t in &tensors {
        write_tensor(out, t)?;
    }
    out.flush()?;
    Ok(hp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a CT2 model.bin: variables are (name, dims, dtype, data).
    pub(crate) fn ct2_file(
        vars: &[(String, Vec<u32>, u8, Vec<u8>)],
        aliases: &[(&str, &str)],
    ) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, x: &str) {
            out.extend_from_slice(&((x.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(x.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        s(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
        for (name, dims, dt, data) in vars {
            s(&mut out, name);
            out.push(dims.len() as u8);
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.push(*dt);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (a, t) in aliases {
            s(&mut out, a);
            s(&mut out, t);
        }
        out
    }

    /// f16 data whose element `i` is `base + i` (exact in f16 for small values).
    fn f16s(n: usize, base: f32) -> Vec<u8> {
        (0..n)
            .flat_map(|i| f16::from_f32(base + i as f32).to_bits().to_le_bytes())
            .collect()
    }

    /// A tiny Whisper: d=4, 2 heads, 1 encoder + 1 decoder layer, 6 tokens,
    /// 2 mels, audio ctx 3, text ctx 5. Every variable's values start at a
    /// distinct base so the test can tell which source a tensor came from.
    pub(crate) fn tiny_model() -> Vec<u8> {
        let d = 4u32;
        let mut vars: Vec<(String, Vec<u32>, u8, Vec<u8>)> = Vec::new();
        let mut base = 0.0f32;
        let mut add = |name: &str, dims: Vec<u32>| {
            let n: u32 = dims.iter().product();
            vars.push((name.to_string(), dims, DT_F16, f16s(n as usize, base)));
            base += 40.0;
        };
        add("encoder/conv1/weight", vec![d, 2, 3]);
        add("encoder/conv1/bias", vec![d]);
        add("encoder/conv2/weight", vec![d, d, 3]);
        add("encoder/conv2/bias", vec![d]);
        add("encoder/position_encodings/encodings", vec![3, d]);
        for p in ["encoder/layer_0", "decoder/layer_0"] {
            add(
                &format!("{p}/self_attention/linear_0/weight"),
                vec![3 * d, d],
            );
            add(&format!("{p}/self_attention/linear_0/bias"), vec![3 * d]);
            add(&format!("{p}/self_attention/linear_1/weight"), vec![d, d]);
            add(&format!("{p}/self_attention/linear_1/bias"), vec![d]);
            add(&format!("{p}/self_attention/layer_norm/gamma"), vec![d]);
            add(&format!("{p}/self_attention/layer_norm/beta"), vec![d]);
            add(&format!("{p}/ffn/linear_0/weight"), vec![2 * d, d]);
            add(&format!("{p}/ffn/linear_0/bias"), vec![2 * d]);
            add(&format!("{p}/ffn/linear_1/weight"), vec![d, 2 * d]);
            add(&format!("{p}/ffn/linear_1/bias"), vec![d]);
            add(&format!("{p}/ffn/layer_norm/gamma"), vec![d]);
            add(&format!("{p}/ffn/layer_norm/beta"), vec![d]);
        }
        add("decoder/layer_0/attention/linear_0/weight", vec![d, d]);
        add("decoder/layer_0/attention/linear_0/bias", vec![d]);
        add("decoder/layer_0/attention/linear_1/weight", vec![2 * d, d]);
        add("decoder/layer_0/attention/linear_1/bias", vec![2 * d]);
        add("decoder/layer_0/attention/linear_2/weight", vec![d, d]);
        add("decoder/layer_0/attention/linear_2/bias", vec![d]);
        add("decoder/layer_0/attention/layer_norm/gamma", vec![d]);
        add("decoder/layer_0/attention/layer_norm/beta", vec![d]);
        add("encoder/layer_norm/gamma", vec![d]);
        add("encoder/layer_norm/beta", vec![d]);
        add("decoder/layer_norm/gamma", vec![d]);
        add("decoder/layer_norm/beta", vec![d]);
        add("decoder/embeddings/weight", vec![6, d]);
        add("decoder/position_encodings/encodings", vec![5, d]);
        vars.push((
            "encoder/num_heads".into(),
            vec![],
            DT_I16,
            2i16.to_le_bytes().to_vec(),
        ));
        vars.push((
            "decoder/num_heads".into(),
            vec![],
            DT_I16,
            2i16.to_le_bytes().to_vec(),
        ));
        ct2_file(
            &vars,
            &[("decoder/projection/weight", "decoder/embeddings/weight")],
        )
    }

    pub(crate) fn tiny_tokenizer() -> Vec<u8> {
        // "Ġ" is GPT-2's encoding of the space byte; "Ċ" of '\n'.
        serde_json::json!({
            "model": {"type": "BPE", "vocab": {
                "a": 0, "b": 1, "Ġhello": 2, "Ċ": 3, "<|endoftext|>": 4
            }},
            "added_tokens": [{"id": 4, "content": "<|endoftext|>"}]
        })
        .to_string()
        .into_bytes()
    }

    pub(crate) fn npz(n_mels: usize, n_fft: usize) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n_mels}, {n_fft}), }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        for i in 0..n_mels * n_fft {
            npy.extend_from_slice(&(i as f32 * 0.5).to_le_bytes());
        }
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file(format!("mel_{n_mels}.npy"), opts).unwrap();
        w.write_all(&npy).unwrap();
        w.finish().unwrap();
        buf.into_inner()
    }

    /// A parsed ggml tensor: (name, dims as written (reversed), ftype, data).
    type GgmlTensor = (String, Vec<i32>, i32, Vec<u8>);

    struct Reader<'a>(&'a [u8], usize);
    impl Reader<'_> {
        fn i32(&mut self) -> i32 {
            let v = i32::from_le_bytes(self.0[self.1..self.1 + 4].try_into().unwrap());
            self.1 += 4;
            v
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            let v = self.0[self.1..self.1 + n].to_vec();
            self.1 += n;
            v
        }
    }

    fn parse_ggml(buf: &[u8]) -> (Vec<i32>, Vec<f32>, Vec<Vec<u8>>, Vec<GgmlTensor>) {
        let mut r = Reader(buf, 0);
        assert_eq!(r.i32() as u32, 0x6767_6d6c);
        let hp: Vec<i32> = (0..11).map(|_| r.i32()).collect();
        let (rows, cols) = (r.i32(), r.i32());
        let mel: Vec<f32> = (0..rows * cols)
            .map(|_| f32::from_bits(r.i32() as u32))
            .collect();
        let n_tok = r.i32();
        let toks: Vec<Vec<u8>> = (0..n_tok)
            .map(|_| {
                let n = r.i32() as usize;
                r.bytes(n)
            })
            .collect();
        let mut tensors = Vec::new();
        while r.1 < buf.len() {
            let (nd, nl, ft) = (r.i32(), r.i32(), r.i32());
            let dims: Vec<i32> = (0..nd).map(|_| r.i32()).collect();
            let name = String::from_utf8(r.bytes(nl as usize)).unwrap();
            let n: i32 = dims.iter().product();
            let data = r.bytes(n as usize * if ft == 0 { 4 } else { 2 });
            tensors.push((name, dims, ft, data));
        }
        (hp, mel, toks, tensors)
    }

    fn as_f32(t: &GgmlTensor) -> Vec<f32> {
        if t.2 == 0 {
            t.3.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        } else {
            t.3.chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect()
        }
    }

    #[test]
    fn tiny_model_converts_with_openai_names_layout_and_splits() {
        let mut out = Vec::new();
        let hp = convert(&tiny_model(), &tiny_tokenizer(), &npz(2, 201), &mut out).unwrap();
        assert_eq!(hp.n_audio_layer, 1);
        let (h, mel, toks, tensors) = parse_ggml(&out);
        assert_eq!(h, vec![6, 3, 4, 2, 1, 5, 4, 2, 1, 2, 1]);
        assert_eq!(mel.len(), 2 * 201);
        assert_eq!(mel[3], 1.5);
        // Specials dropped; byte-level alphabet decoded to raw bytes.
        assert_eq!(
            toks,
            vec![
                b"a".to_vec(),
                b"b".to_vec(),
                b" hello".to_vec(),
                b"\n".to_vec()
            ]
        );

        let names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
        let expected = [
            "encoder.conv1.weight",
            "encoder.conv1.bias",
            "encoder.conv2.weight",
            "encoder.conv2.bias",
            "encoder.positional_embedding",
            "encoder.blocks.0.attn.query.weight",
            "encoder.blocks.0.attn.query.bias",
            "encoder.blocks.0.attn.key.weight",
            "encoder.blocks.0.attn.value.weight",
            "encoder.blocks.0.attn.value.bias",
            "encoder.blocks.0.attn.out.weight",
            "encoder.blocks.0.attn.out.bias",
            "encoder.blocks.0.attn_ln.weight",
            "encoder.blocks.0.attn_ln.bias",
            "encoder.blocks.0.mlp.0.weight",
            "encoder.blocks.0.mlp.0.bias",
            "encoder.blocks.0.mlp.2.weight",
            "encoder.blocks.0.mlp.2.bias",
            "encoder.blocks.0.mlp_ln.weight",
            "encoder.blocks.0.mlp_ln.bias",
            "encoder.ln_post.weight",
            "encoder.ln_post.bias",
            "decoder.token_embedding.weight",
            "decoder.positional_embedding",
            "decoder.blocks.0.attn.query.weight",
            "decoder.blocks.0.attn.query.bias",
            "decoder.blocks.0.attn.key.weight",
            "decoder.blocks.0.attn.value.weight",
            "decoder.blocks.0.attn.value.bias",
            "decoder.blocks.0.attn.out.weight",
            "decoder.blocks.0.attn.out.bias",
            "decoder.blocks.0.attn_ln.weight",
            "decoder.blocks.0.attn_ln.bias",
            "decoder.blocks.0.cross_attn.query.weight",
            "decoder.blocks.0.cross_attn.query.bias",
            "decoder.blocks.0.cross_attn.key.weight",
            "decoder.blocks.0.cross_attn.value.weight",
            "decoder.blocks.0.cross_attn.value.bias",
            "decoder.blocks.0.cross_attn.out.weight",
            "decoder.blocks.0.cross_attn.out.bias",
            "decoder.blocks.0.cross_attn_ln.weight",
            "decoder.blocks.0.cross_attn_ln.bias",
            "decoder.blocks.0.mlp.0.weight",
            "decoder.blocks.0.mlp.0.bias",
            "decoder.blocks.0.mlp.2.weight",
            "decoder.blocks.0.mlp.2.bias",
            "decoder.blocks.0.mlp_ln.weight",
            "decoder.blocks.0.mlp_ln.bias",
            "decoder.ln.weight",
            "decoder.ln.bias",
        ];
        assert_eq!(names, expected);
        let get = |n: &str| tensors.iter().find(|t| t.0 == n).unwrap();

        // Invariant 2: dims reversed; 1-D, conv bias, positional embeddings f32.
        let conv1 = get("encoder.conv1.weight");
        assert_eq!((conv1.1.clone(), conv1.2), (vec![3, 2, 4], 1));
        let cb = get("encoder.conv1.bias");
        assert_eq!((cb.1.clone(), cb.2), (vec![1, 4], 0));
        let pe = get("encoder.positional_embedding");
        assert_eq!((pe.1.clone(), pe.2), (vec![4, 3], 0));
        assert_eq!(get("decoder.positional_embedding").2, 0);
        assert_eq!(get("encoder.ln_post.weight").2, 0);
        assert_eq!(get("decoder.token_embedding.weight").2, 1);

        // Invariant 3: fused QKV split in thirds along rows; K has no bias.
        let q = as_f32(get("encoder.blocks.0.attn.query.weight"));
        let k = as_f32(get("encoder.blocks.0.attn.key.weight"));
        let v = as_f32(get("encoder.blocks.0.attn.value.weight"));
        assert_eq!(get("encoder.blocks.0.attn.key.weight").1, vec![4, 4]);
        let base = q[0];
        assert_eq!(k[0], base + 16.0);
        assert_eq!(v[0], base + 32.0);
        assert_eq!(v[15], base + 47.0);
        let vb = as_f32(get("encoder.blocks.0.attn.value.bias"));
        let qb = as_f32(get("encoder.blocks.0.attn.query.bias"));
        assert_eq!((vb.len(), vb[0] - qb[0]), (4, 8.0));
        assert!(!names.contains(&"encoder.blocks.0.attn.key.bias"));
        // Cross-attention K,V split in halves.
        let ck = as_f32(get("decoder.blocks.0.cross_attn.key.weight"));
        let cv = as_f32(get("decoder.blocks.0.cross_attn.value.weight"));
        assert_eq!(cv[0] - ck[0], 16.0);
        let cvb = get("decoder.blocks.0.cross_attn.value.bias");
        assert_eq!(cvb.1, vec![4]);
        // Renames keep the source data: layer norm gamma → weight.
        let g = as_f32(get("encoder.blocks.0.mlp_ln.weight"));
        let b = as_f32(get("encoder.blocks.0.mlp_ln.bias"));
        assert_eq!(b[0] - g[0], 40.0);
    }

    #[test]
    fn truncated_ct2_is_an_error_not_a_panic() {
        let full = tiny_model();
        for cut in [0, 3, 10, full.len() / 2, full.len() - 5] {
            let err = convert(
                &full[..cut],
                &tiny_tokenizer(),
                &npz(2, 201),
                &mut Vec::new(),
            );
            assert!(err.is_err(), "cut at {cut} was accepted");
        }
    }

    #[test]
    fn missing_mel_bank_names_the_member() {
        let err = convert(
            &tiny_model(),
            &tiny_tokenizer(),
            &npz(80, 201),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mel_2.npy"), "{err}");
    }
}
