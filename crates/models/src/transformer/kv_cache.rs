//! The KV cache of inference: keys and values of the positions processed so
//! far, per layer, and the token ids they came from, with the prefix reuse
//! that lets windows sharing a prompt prefix skip recomputing it.

use candle_core::Tensor;

use super::CausalLm;

/// Keys and values of the positions processed so far, per layer, plus the
/// token ids they came from. Truncating it to a shared prefix lets the next
/// prompt with that prefix skip recomputing it.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer `(k, v)`, each `[1, kv_heads, len, head_dim]`.
    pub(super) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(super) tokens: Vec<u32>,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &CausalLm) -> Self {
        Self {
            layers: vec![None; model.config.n_layers],
            tokens: Vec::new(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token ids of the cached positions.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keeps the first `len` positions (no-op if `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.tokens.len() {
            return;
        }
        self.tokens.truncate(len);
        for slot in &mut self.layers {
            *slot = match slot.take() {
                // Narrowing cannot fail: len is below the cached length.
                Some((k, v)) if len > 0 => k.narrow(2, 0, len).ok().zip(v.narrow(2, 0, len).ok()),
                _ => None,
            };
        }
    }

    /// Back to `len` positions after a failed forward pass, which may have
    /// appended keys and values to some layers only.
    pub(super) fn rollback(&mut self, len: usize) {
        self.tokens.truncate(len);
        for slot in &mut self.layers {
            *slot = match slot.take() {
                Some((k, v)) if len > 0 => match (k.dim(2), v.dim(2)) {
                    (Ok(kl), Ok(vl)) if kl >= len && vl >= len => {
                        k.narrow(2, 0, len).ok().zip(v.narrow(2, 0, len).ok())
                    }
                    _ => None,
                },
                _ => None,
            };
        }
        if len > 0 && self.layers.iter().any(Option::is_none) {
            self.clear_all();
        }
    }

    fn clear_all(&mut self) {
        self.tokens.clear();
        self.layers.iter_mut().for_each(|s| *s = None);
    }

    /// Length of the longest common prefix of the cached tokens and `tokens`.
    pub fn common_prefix_len(&self, tokens: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Truncates the cache to its longest common prefix with `tokens`, keeping
    /// at least one token of `tokens` uncached (so a forward pass over the rest
    /// yields the last position). Returns how many positions were kept.
    pub fn reuse_prefix(&mut self, tokens: &[u32]) -> usize {
        self.reuse_prefix_leaving(tokens, 1)
    }

    /// Like [`KvCache::reuse_prefix`], but leaves at least `min_new` (at least
    /// one) tokens of `tokens` uncached.
    pub fn reuse_prefix_leaving(&mut self, tokens: &[u32], min_new: usize) -> usize {
        let keep = self
            .common_prefix_len(tokens)
            .min(tokens.len().saturating_sub(min_new.max(1)));
        self.truncate(keep);
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cache_prefix_reuse_keeps_one_token() {
        let kv = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 2))
            .unwrap();
        let mut c = KvCache {
            layers: vec![Some((kv.clone(), kv))],
            tokens: vec![1, 2, 3],
        };
        assert_eq!(c.common_prefix_len(&[1, 2, 4]), 2);
        // Identical prompt: one token must stay uncached.
        assert_eq!(c.clone().reuse_prefix(&[1, 2, 3]), 2);
        assert_eq!(c.clone().reuse_prefix_leaving(&[1, 2, 3], 0), 2);
        assert_eq!(c.clone().reuse_prefix_leaving(&[1, 2, 3, 4], 3), 1);
        assert_eq!(c.reuse_prefix(&[1, 9]), 1);
        assert_eq!(c.tokens(), &[1]);
        let (k, _) = c.layers[0].as_ref().unwrap();
        assert_eq!(k.dims(), [1, 1, 1, 2]);
        assert_eq!(
            k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0.0, 1.0]
        );
        c.clear();
        assert!(c.is_empty() && c.layers[0].is_none());
    }
}
