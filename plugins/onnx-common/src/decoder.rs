//! The ONNX Runtime session of a decoder-only causal LM and its KV cache.
//!
//! Inputs and outputs are found by name in the session, so both common export layouts work:
//! - Optimum / transformers.js: `input_ids`, `attention_mask`, `position_ids`,
//!   `past_key_values.N.key|value` → `logits`, `present.N.key|value`;
//! - onnxruntime-genai: the same without `position_ids` (GroupQueryAttention derives positions
//!   from the mask).
//!
//! Shapes: ids, mask and positions are `[1, n]` int64 (int32 when the graph says so); each past
//! key/value is `[1, kv_heads, past, head_dim]` in the graph's element type (f32 or f16), and the
//! present outputs are the same with `past + n`; logits are `[1, n, vocab]` (or `[1, 1, vocab]`).
//! Every `step` feeds the presents of the previous step back as pasts, without copying them.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use r1_plugin_sdk::PluginError;

use crate::model_dir::HfConfig;

/// The names of one layer's cache tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LayerNames {
    past_key: String,
    past_value: String,
    present_key: String,
    present_value: String,
}

/// A decoder session and its KV cache.
pub struct Decoder {
    session: Session,
    input_ids: String,
    ids_type: TensorElementType,
    attention_mask: Option<(String, TensorElementType)>,
    position_ids: Option<(String, TensorElementType)>,
    layers: Vec<LayerNames>,
    logits: String,
    kv_type: TensorElementType,
    kv_heads: usize,
    head_dim: usize,
    /// Two values per layer (key, value), `None` before the first step.
    past: Option<Vec<DynValue>>,
    past_len: usize,
}

fn backend(message: String) -> PluginError {
    PluginError::backend(message)
}

fn tensor_info(ty: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

/// `past_key_values.7.key` → (7, "key").
fn parse_cache_name<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (layer, kind) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    matches!(kind, "key" | "value").then_some((layer, kind))
}

impl Decoder {
    /// Wraps `session`, discovering its inputs and outputs; `config` supplies the KV heads and
    /// head width where the graph leaves them symbolic. `path` names the model in errors.
    ///
    /// # Errors
    /// [`PluginError::load_failed`] when the graph is not a decoder this code can drive: no
    /// `input_ids` or `logits`, a past without its present (or the reverse), an input it does not
    /// know (`use_cache_branch`, …), or cache shapes it cannot determine.
    pub fn new(session: Session, config: &HfConfig, path: &str) -> Result<Decoder, PluginError> {
        let fail = |what: String| {
            PluginError::load_failed(format!(
                "model {path} is not a decoder-only ONNX graph r1d can run: {what}"
            ))
        };
        let mut input_ids = None;
        let mut attention_mask = None;
        let mut position_ids = None;
        let mut pasts: Vec<(usize, String, String)> = Vec::new();
        let mut kv = None;
        for input in session.inputs() {
            let name = input.name();
            let (ty, shape) = tensor_info(input.dtype())
                .ok_or_else(|| fail(format!("input {name} is not a tensor")))?;
            match name {
                "input_ids" => input_ids = Some(ty),
                "attention_mask" => attention_mask = Some((name.to_owned(), ty)),
                "position_ids" => position_ids = Some((name.to_owned(), ty)),
                _ => {
                    let Some((layer, kind)) = parse_cache_name(name, "past_key_values.") else {
                        return Err(fail(format!(
                            "unknown input {name} (expected input_ids, attention_mask, \
                             position_ids, past_key_values.N.key/value)"
                        )));
                    };
                    if kv.is_none() {
                        kv = Some((ty, shape));
                    }
                    pasts.push((layer, kind.to_owned(), name.to_owned()));
                }
            }
        }
        let ids_type = input_ids.ok_or_else(|| fail("no input_ids input".into()))?;
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let logits = outputs
            .iter()
            .find(|n| **n == "logits")
            .ok_or_else(|| fail("no logits output".into()))?
            .to_string();

        let n_layers = pasts.iter().map(|(l, _, _)| l + 1).max().unwrap_or(0);
        let mut layers = Vec::with_capacity(n_layers);
        for layer in 0..n_layers {
            let past = |kind: &str| {
                pasts
                    .iter()
                    .find(|(l, k, _)| *l == layer && k == kind)
                    .map(|(_, _, n)| n.clone())
                    .ok_or_else(|| fail(format!("no input past_key_values.{layer}.{kind}")))
            };
            let present = |kind: &str| {
                [
                    format!("present.{layer}.{kind}"),
                    format!("present_key_values.{layer}.{kind}"),
                ]
                .into_iter()
                .find(|n| outputs.contains(&n.as_str()))
                .ok_or_else(|| fail(format!("no output present.{layer}.{kind}")))
            };
            layers.push(LayerNames {
                past_key: past("key")?,
                past_value: past("value")?,
                present_key: present("key")?,
                present_value: present("value")?,
            });
        }
        if layers.is_empty() {
            return Err(fail(
                "no past_key_values inputs (a graph without a KV cache is not supported)".into(),
            ));
        }
        let (kv_type, kv_shape) = kv.expect("layers is not empty, so a past was seen");
        if !matches!(
            kv_type,
            TensorElementType::Float32 | TensorElementType::Float16
        ) {
            return Err(fail(format!(
                "KV cache element type {kv_type:?} (expected float32 or float16)"
            )));
        }
        let dim = |i: usize, fallback: Option<u32>, what: &str| {
            kv_shape
                .get(i)
                .copied()
                .filter(|d| *d > 0)
                .map(|d| d as usize)
                .or(fallback.map(|v| v as usize))
                .filter(|d| *d > 0)
                .ok_or_else(|| fail(format!("cannot tell the cache's {what}")))
        };
        let kv_heads = dim(1, config.kv_heads(), "key/value heads")?;
        let head_dim = dim(3, config.head_dim(), "head width")?;
        Ok(Decoder {
            session,
            input_ids: "input_ids".into(),
            ids_type,
            attention_mask,
            position_ids,
            layers,
            logits,
            kv_type,
            kv_heads,
            head_dim,
            past: None,
            past_len: 0,
        })
    }

    /// Transformer layers (pairs of cache tensors).
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Key/value heads per layer.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Bytes per cache element (4 for f32, 2 for f16).
    pub fn kv_element_bytes(&self) -> usize {
        match self.kv_type {
            TensorElementType::Float16 => 2,
            _ => 4,
        }
    }

    /// Tokens whose keys and values are in the cache.
    pub fn past_len(&self) -> usize {
        self.past_len
    }

    /// Forgets the cache.
    pub fn reset(&mut self) {
        self.past = None;
        self.past_len = 0;
    }

    fn int_tensor(
        ty: TensorElementType,
        values: Vec<i64>,
        what: &str,
    ) -> Result<SessionInputValue<'static>, PluginError> {
        let shape = [1usize, values.len()];
        let value: DynValue = match ty {
            TensorElementType::Int32 => {
                let v: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
                Tensor::from_array((shape, v)).map(|t| t.into_dyn())
            }
            _ => Tensor::from_array((shape, values)).map(|t| t.into_dyn()),
        }
        .map_err(|e| backend(format!("failed to make the {what} tensor: {e}")))?;
        Ok(value.into())
    }

    fn empty_cache(&self) -> Result<DynValue, PluginError> {
        let shape = [1usize, self.kv_heads, 0, self.head_dim];
        match self.kv_type {
            TensorElementType::Float16 => {
                Tensor::<half::f16>::from_array((shape, Vec::new())).map(|t| t.into_dyn())
            }
            _ => Tensor::<f32>::from_array((shape, Vec::new())).map(|t| t.into_dyn()),
        }
        .map_err(|e| backend(format!("failed to make an empty KV cache tensor: {e}")))
    }

    /// Evaluates `tokens` after the cached ones and returns the logits of the last one
    /// (`vocab` values, f32). On error the cache is forgotten (its state is unknown).
    ///
    /// # Errors
    /// [`PluginError::backend`] naming ONNX Runtime's message; `tokens` must not be empty.
    pub fn step(&mut self, tokens: &[i32]) -> Result<Vec<f32>, PluginError> {
        let result = self.step_inner(tokens);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn step_inner(&mut self, tokens: &[i32]) -> Result<Vec<f32>, PluginError> {
        if tokens.is_empty() {
            return Err(backend("no tokens to evaluate".into()));
        }
        let n = tokens.len();
        let total = self.past_len + n;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + 2 * self.layers.len());
        inputs.push((
            Cow::Borrowed(self.input_ids.as_str()),
            Self::int_tensor(
                self.ids_type,
                tokens.iter().map(|t| i64::from(*t)).collect(),
                "input_ids",
            )?,
        ));
        if let Some((name, ty)) = &self.attention_mask {
            inputs.push((
                Cow::Borrowed(name.as_str()),
                Self::int_tensor(*ty, vec![1; total], "attention_mask")?,
            ));
        }
        if let Some((name, ty)) = &self.position_ids {
            inputs.push((
                Cow::Borrowed(name.as_str()),
                Self::int_tensor(
                    *ty,
                    (self.past_len as i64..total as i64).collect(),
                    "position_ids",
                )?,
            ));
        }
        let empty;
        match &self.past {
            Some(past) => {
                for (layer, names) in self.layers.iter().enumerate() {
                    inputs.push((
                        Cow::Borrowed(names.past_key.as_str()),
                        SessionInputValue::from(&past[2 * layer]),
                    ));
                    inputs.push((
                        Cow::Borrowed(names.past_value.as_str()),
                        SessionInputValue::from(&past[2 * layer + 1]),
                    ));
                }
            }
            None => {
                empty = self.empty_cache()?;
                for names in &self.layers {
                    inputs.push((
                        Cow::Borrowed(names.past_key.as_str()),
                        SessionInputValue::from(&empty),
                    ));
                    inputs.push((
                        Cow::Borrowed(names.past_value.as_str()),
                        SessionInputValue::from(&empty),
                    ));
                }
            }
        }
        let mut outputs = self
            .session
            .run(inputs)
            .map_err(|e| backend(format!("ONNX Runtime failed to run the model: {e}")))?;
        let logits = {
            let value = outputs
                .get(&self.logits)
                .ok_or_else(|| backend("the model returned no logits".into()))?;
            last_row(value)?
        };
        let mut present = Vec::with_capacity(2 * self.layers.len());
        for names in &self.layers {
            for name in [&names.present_key, &names.present_value] {
                present.push(
                    outputs
                        .remove(name.as_str())
                        .ok_or_else(|| backend(format!("the model returned no {name}")))?,
                );
            }
        }
        drop(outputs);
        self.past = Some(present);
        self.past_len = total;
        Ok(logits)
    }
}

/// The last row of a `[1, n, vocab]` (or `[1, vocab]`) logits tensor, as f32.
fn last_row(value: &DynValue) -> Result<Vec<f32>, PluginError> {
    let shape: Vec<i64> = value.shape().iter().copied().collect();
    let vocab = *shape
        .last()
        .filter(|v| **v > 0)
        .ok_or_else(|| backend(format!("logits have the shape {shape:?}")))?
        as usize;
    let row = |len: usize| len.checked_sub(vocab).map(|start| start..len);
    match value.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float16,
            ..
        } => {
            let (_, data) = value
                .try_extract_tensor::<half::f16>()
                .map_err(|e| backend(format!("failed to read the logits: {e}")))?;
            let range = row(data.len()).ok_or_else(|| backend("logits are empty".into()))?;
            Ok(data[range].iter().map(|v| v.to_f32()).collect())
        }
        _ => {
            let (_, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| backend(format!("failed to read the logits: {e}")))?;
            let range = row(data.len()).ok_or_else(|| backend("logits are empty".into()))?;
            Ok(data[range].to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_parse() {
        assert_eq!(
            parse_cache_name("past_key_values.12.value", "past_key_values."),
            Some((12, "value"))
        );
        assert_eq!(
            parse_cache_name("past_key_values.x.key", "past_key_values."),
            None
        );
        assert_eq!(parse_cache_name("present.0.key", "past_key_values."), None);
    }
}
