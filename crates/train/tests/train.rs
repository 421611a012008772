//! FIRST training on the real SmolLM2 model: the gradient of the whole
//! differentiable forward pass against finite differences, and a small
//! overfit run whose adapter, saved in PEFT layout and merged back into a
//! quantized model, makes FIRST put the target passage first.

#[path = "../../models/tests/transformer_support/mod.rs"]
mod transformer_support;

use candle_core::{DType, Device, Tensor};
use firstrank_core::prompt::{self, PromptOptions, PromptTemplate};
use firstrank_core::significance::SplitMix64;
use firstrank_core::training::{permutation_text, TrainingList};
use firstrank_core::window::WindowScorer;
use firstrank_core::{Candidate, Query};
use firstrank_models::adapter::merge::{merge_into_gguf, MergedType};
use firstrank_models::adapter::{LoraConfig, LoraSet};
use firstrank_models::chat::ChatTemplate;
use firstrank_models::gguf_tokenizer::tokenizer_from_gguf_file;
use firstrank_models::reranker::{LlmReranker, RerankerConfig};
use firstrank_models::transformer::{CausalLm, Projection, TrainContext, WeightMode};
use firstrank_train::step::{
    accumulate_batch_gradients, accumulate_lora_gradients, example_loss, LossSpec,
};
use firstrank_train::{prepare_example, train, AdapterKind, Objective, Schedule, TrainOptions};
use transformer_support::{model_path, SMOLLM2};

/// The real SmolLM2 reranker, or `None` (after the workspace's skip policy:
/// a SKIP line, or a failure under `FIRSTRANK_REQUIRE_DATA=1`) when the model
/// is not available.
fn reranker(weights: WeightMode) -> Option<LlmReranker> {
    let Some(path) = model_path(SMOLLM2.file) else {
        firstrank_core::testing::skip_or_fail(
            "SmolLM2 not available (set FIRSTRANK_FETCH_MODELS=1 to fetch it)",
        );
        return None;
    };
    let tok = tokenizer_from_gguf_file(&path).unwrap();
    let chat = ChatTemplate::from_optional(tok.chat_template.as_deref(), "", "").unwrap();
    let model = CausalLm::load(&path, weights, &Device::Cpu).unwrap();
    let config = RerankerConfig {
        weights,
        max_window: 4,
        ..RerankerConfig::default()
    };
    Some(LlmReranker::assemble(model, tok, chat, config, "smollm2".into()).unwrap())
}

fn window(texts: &[&str]) -> Vec<Candidate> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Candidate {
            docid: format!("d{i}"),
            score: 0.0,
            title: None,
            text: t.to_string(),
        })
        .collect()
}

/// A training list over `texts` whose target puts passage `order[0]` first.
fn list(id: &str, query: &str, texts: &[&str], order: &[usize]) -> TrainingList {
    let template = PromptTemplate::rank_zephyr_alpha();
    let p = prompt::build(
        query,
        &window(texts),
        &template,
        &PromptOptions::rank_llm(),
        None,
    )
    .unwrap();
    TrainingList {
        id: id.into(),
        system: Some(p.system),
        user: p.user,
        target: permutation_text(order, template.identifiers).unwrap(),
    }
}

const QUERY_A: &str = "how do bees make honey";
const PASSAGES_A: [&str; 3] = [
    "The stock market fell sharply on Tuesday.",
    "Bees collect nectar and evaporate it in the hive to make honey.",
    "Paris is the capital of France.",
];
const QUERY_B: &str = "boiling point of water";
const PASSAGES_B: [&str; 3] = [
    "Cats sleep for most of the day.",
    "Football is played with eleven players per side.",
    "Water boils at 100 degrees Celsius at sea level.",
];

#[test]
fn training_examples_line_up_with_first_inference() {
    let Some(r) = reranker(WeightMode::DequantizedF32) else {
        return;
    };
    let l = list("a", QUERY_A, &PASSAGES_A, &[1, 0, 2]);
    let ex = prepare_example(&l, &r).unwrap();
    // The rank position is the `[` after the generation prompt: the prompt
    // FIRST scores at inference is exactly the tokens up to it.
    let mut r2 = reranker(WeightMode::DequantizedF32).unwrap();
    let q = Query {
        qid: "a".into(),
        text: QUERY_A.into(),
        instruction: None,
    };
    let (_, inference_ids) = r2.window_input(&q, &window(&PASSAGES_A)).unwrap();
    assert_eq!(&ex.tokens[..=ex.rank_position], inference_ids.as_slice());
    assert_eq!(ex.tokens[ex.rank_position + 1], r.identifier_ids()[1]);
    // The answer ends with one end-of-turn token.
    assert!(r.stop_ids().contains(ex.tokens.last().unwrap()));
    assert_eq!(ex.order, vec![1, 0, 2]);
    // Each passage's end, where the per-passage loss reads, is the newline
    // token after its text, in order and before the ranking position.
    assert_eq!(ex.passage_ends.len(), 3);
    assert!(ex.passage_ends.windows(2).all(|w| w[0] < w[1]));
    assert!(*ex.passage_ends.last().unwrap() < ex.rank_position);
    for (i, &p) in ex.passage_ends.iter().enumerate() {
        let piece = r.tokenizer().decode(&[ex.tokens[p]]).unwrap();
        assert!(piece.contains('\n'), "passage {i} ends at {piece:?}");
        let before = r.tokenizer().decode(&ex.tokens[..p]).unwrap();
        assert!(before.ends_with(PASSAGES_A[i]), "passage {i}: {before:?}");
    }
    // A target that is not a permutation is refused with the list named.
    let mut bad = l.clone();
    bad.target = "[B] > [B] > [A]".into();
    let err = prepare_example(&bad, &r).unwrap_err().to_string();
    assert!(err.contains("list a"), "{err}");
}

/// A rank-2 LoRA on three projections (of `layers`, None: all) whose B
/// matrices are non-zero, so gradients reach A too.
fn small_lora_with_nonzero_b(model: &CausalLm, layers: Option<Vec<usize>>) -> LoraSet {
    let config = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![Projection::Q, Projection::V, Projection::Down],
        layers,
    };
    let set = LoraSet::new(model, &config, 5).unwrap();
    let mut rng = SplitMix64(9);
    for (_, pair) in set.iter() {
        let dims = pair.b.dims().to_vec();
        let vals: Vec<f32> = (0..dims[0] * dims[1])
            .map(|_| (rng.unit_f64() as f32 - 0.5) * 0.2)
            .collect();
        pair.b
            .set(&Tensor::from_vec(vals, (dims[0], dims[1]), &Device::Cpu).unwrap())
            .unwrap();
    }
    set
}

#[test]
fn lora_gradient_through_the_model_matches_finite_differences() {
    let Some(r) = reranker(WeightMode::DequantizedF32) else {
        return;
    };
    let model = r.model();
    let set = small_lora_with_nonzero_b(model, None);
    let ex = prepare_example(&list("a", QUERY_A, &PASSAGES_A, &[1, 0, 2]), &r).unwrap();
    let ctx = TrainContext {
        adapters: Some(&set),
        ..TrainContext::default()
    };
    let ids = r.identifier_ids().to_vec();
    for objective in [Objective::Ranking, Objective::Generation] {
        let loss = |ctx: &TrainContext<'_>| {
            let spec = LossSpec {
                objective,
                ranking_weight: 1.0,
                passage_weight: 0.0,
                identifier_ids: &ids,
            };
            example_loss(model, ctx, &ex, &spec).unwrap().total
        };
        let l0 = loss(&ctx);
        let grads = l0.backward().unwrap();
        // Check the largest gradient entry of three matrices: the first
        // layer's query A (the gradient crosses every layer), a middle V B,
        // and the last layer's down-projection B.
        let n_layers = model.config().n_layers;
        for (layer, target, use_a) in [
            (0, Projection::Q, true),
            (n_layers / 2, Projection::V, false),
            (n_layers - 1, Projection::Down, false),
        ] {
            let pair = set.get(layer, target).unwrap();
            let var = if use_a { &pair.a } else { &pair.b };
            let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let g = g.to_vec1::<f32>().unwrap();
            let (k, gk) = g
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map(|(k, v)| (k, *v as f64))
                .unwrap();
            let orig = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // Large enough that the loss change is far above f32 rounding.
            let h = 0.02f32;
            let at = |delta: f32| {
                let mut v = orig.clone();
                v[k] += delta;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&ctx).to_scalar::<f32>().unwrap() as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            var.set(&Tensor::from_vec(orig, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            let rel = (fd - gk).abs() / gk.abs().max(1e-6);
            assert!(
                rel < 0.05,
                "{objective} layer {layer} {target:?}: autograd {gk} vs finite difference {fd} (rel {rel})"
            );
        }
    }
}

#[test]
fn checkpointed_batch_gradients_equal_per_example_backward() {
    check_checkpointed_gradients(None);
}

/// With adapters on a few upper layers only, the checkpointed backward pass
/// stops at the lowest of them and still gives the plain pass's gradients;
/// the adapter records its layers (PEFT's `layers_to_transform`) and loads
/// back with them.
#[test]
fn adapters_on_upper_layers_train_and_reload() {
    let Some(r) = reranker(WeightMode::DequantizedF32) else {
        return;
    };
    let Some(set) = check_checkpointed_gradients(Some(vec![29, 21, 25])) else {
        return;
    };
    assert_eq!(set.layers(), vec![21, 25, 29]);
    assert_eq!(set.lowest_layer(), Some(21));
    let dir = tempfile::tempdir().unwrap();
    set.save(dir.path(), DType::F32, "smollm2").unwrap();
    #[cfg(unix)]
    {
        // Readable like any other output, not the 0600 of a temporary file.
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("adapter_model.safetensors")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    }
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["layers_to_transform"],
        serde_json::json!([21, 25, 29])
    );
    let back = LoraSet::load(dir.path(), r.model()).unwrap();
    assert_eq!(back.layers(), vec![21, 25, 29]);
    assert_eq!(back.len(), 9);
    // PEFT also writes a single index; a layer the model lacks is refused.
    let edit = |value: serde_json::Value| {
        let mut c = config.clone();
        c["layers_to_transform"] = value;
        std::fs::write(dir.path().join("adapter_config.json"), c.to_string()).unwrap();
    };
    edit(serde_json::json!(25));
    let err = LoraSet::load(dir.path(), r.model()).unwrap();
    assert_eq!(err.layers(), vec![25]);
    edit(serde_json::json!([21, 30]));
    let err = format!("{:#}", LoraSet::load(dir.path(), r.model()).unwrap_err());
    assert!(
        err.contains("adapter_config.json") && err.contains("layer 30"),
        "{err}"
    );
}

/// Checks [`accumulate_batch_gradients`] against per-example plain backward
/// passes for a LoRA on `layers`; returns the adapters.
fn check_checkpointed_gradients(layers: Option<Vec<usize>>) -> Option<LoraSet> {
    let r = reranker(WeightMode::DequantizedF32)?;
    let model = r.model();
    let set = small_lora_with_nonzero_b(model, layers);
    let ctx = TrainContext {
        adapters: Some(&set),
        ..TrainContext::default()
    };
    let ids = r.identifier_ids().to_vec();
    // Lists of different lengths and window sizes: one micro-batch pads
    // the shorter.
    let a = prepare_example(&list("a", QUERY_A, &PASSAGES_A, &[1, 0, 2]), &r).unwrap();
    let mut four = PASSAGES_B.to_vec();
    four.push("Water boils at lower temperatures at high altitude.");
    let b = prepare_example(&list("b", QUERY_B, &four, &[2, 3, 0, 1]), &r).unwrap();
    assert_ne!(a.tokens.len(), b.tokens.len());
    let vars = set.vars();
    // With the per-passage term on, so it is checked on the real model too.
    let spec = LossSpec {
        objective: Objective::Combined,
        ranking_weight: 10.0,
        passage_weight: 1.0,
        identifier_ids: &ids,
    };
    // Reference: each example through the plain forward pass, mean of the
    // two backward passes.
    let mut expected: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut expected_losses = Vec::new();
    for ex in [&a, &b] {
        let l = example_loss(model, &ctx, ex, &spec).unwrap();
        expected_losses.push(l.total.to_scalar::<f32>().unwrap() as f64);
        let store = (l.total * 0.5).unwrap().backward().unwrap();
        for (slot, v) in expected.iter_mut().zip(&vars) {
            let g = store.get(v.as_tensor()).unwrap().clone();
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g).unwrap(),
                None => g,
            });
        }
    }
    // Both batched paths: candle's autograd with per-layer recomputation,
    // and the hand-derived backward pass of the taped blocks.
    let mut checkpointed: Vec<Option<Tensor>> = vec![None; vars.len()];
    let losses =
        accumulate_batch_gradients(model, &ctx, &[&a, &b], &spec, 0.5, &vars, &mut checkpointed)
            .unwrap();
    let slots: Vec<(usize, Projection)> = set.iter().map(|(k, _)| *k).collect();
    let mut taped: Vec<Option<Tensor>> = vec![None; vars.len()];
    let taped_losses =
        accumulate_lora_gradients(model, &ctx, &[&a, &b], &spec, 0.5, &slots, &mut taped).unwrap();
    for (l, e) in losses
        .iter()
        .chain(&taped_losses)
        .zip(expected_losses.iter().cycle())
    {
        assert!(
            (l.total - e).abs() < 1e-3 * e.abs().max(1.0),
            "loss {} vs {e}",
            l.total
        );
    }
    let pairs = checkpointed
        .iter()
        .chain(&taped)
        .zip(expected.iter().cycle());
    for ((g, e), v) in pairs.zip(vars.iter().cycle()) {
        let g = g
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let e = e
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let scale = e.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-8);
        let worst = g
            .iter()
            .zip(&e)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst < 1e-3 * scale,
            "gradient of a {:?} variable differs by {worst} (largest entry {scale})",
            v.dims()
        );
    }
    Some(set)
}

#[test]
fn small_model_overfits_two_lists_and_the_adapter_reloads() {
    let Some(mut r) = reranker(WeightMode::DequantizedF32) else {
        return;
    };
    // Targets chosen against the model's zero-shot preference, so the test
    // shows learning: the zero-shot top passage is never the target's first.
    let q_a = Query {
        qid: "a".into(),
        text: QUERY_A.into(),
        instruction: None,
    };
    let q_b = Query {
        qid: "b".into(),
        text: QUERY_B.into(),
        instruction: None,
    };
    let mut zero = reranker(WeightMode::Quantized).unwrap();
    let argmax = |s: &[f32]| {
        s.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    let za = argmax(&zero.score_window(&q_a, &window(&PASSAGES_A)).unwrap());
    let zb = argmax(&zero.score_window(&q_b, &window(&PASSAGES_B)).unwrap());
    let pick = |z: usize, preferred: usize| {
        if z == preferred {
            (preferred + 1) % 3
        } else {
            preferred
        }
    };
    let first_a = pick(za, 1);
    let first_b = pick(zb, 2);
    let order = |first: usize| {
        let mut o = vec![first];
        o.extend((0..3).filter(|&i| i != first));
        o
    };
    let lists = [
        list("a", QUERY_A, &PASSAGES_A, &order(first_a)),
        list("b", QUERY_B, &PASSAGES_B, &order(first_b)),
    ];
    let examples: Vec<_> = lists
        .iter()
        .map(|l| prepare_example(l, &r).unwrap())
        .collect();
    let opts = TrainOptions {
        objective: Objective::Combined,
        adapter: AdapterKind::Lora(LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Projection::ALL.to_vec(),
            layers: None,
        }),
        learning_rate: 2e-3,
        schedule: Schedule::Constant,
        warmup_steps: 0,
        max_steps: Some(8),
        grad_accum: 2,
        neftune_alpha: None,
        checkpoint_every: 4,
        ..TrainOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    let summary = train(&mut r, &examples, &[], &opts, dir.path(), false, &mut |s| {
        reports.push((s.ranking_loss.unwrap(), s.generation_loss.unwrap(), s.loss))
    })
    .unwrap();
    assert_eq!(summary.steps, 8);
    // It learned an order: far below the loss of equal identifier logits.
    let (rank_last, flat) = (
        summary.final_ranking_loss.unwrap(),
        summary.ranking_loss_flat.unwrap(),
    );
    assert!(
        rank_last < flat / 3.0,
        "ranking loss {rank_last} vs flat {flat}"
    );
    let (rank0, gen0, _) = reports[0];
    let (rank_end, gen_end, total_end) = *reports.last().unwrap();
    // The combined loss is the weighted sum of its parts (λ = 10).
    assert!((total_end - (gen_end + 10.0 * rank_end)).abs() < 1e-3 * total_end.max(1.0));
    assert!(
        rank_end < 0.05 && rank_end < rank0 / 5.0,
        "ranking loss {rank0} -> {rank_end}"
    );
    assert!(gen_end < gen0 / 3.0, "generation loss {gen0} -> {gen_end}");
    // The adapter is PEFT-shaped, small, and loads into the quantized model.
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training.json",
        "checkpoint/state.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let mut tuned = reranker(WeightMode::Quantized).unwrap();
    let merged = tuned.apply_adapter(dir.path()).unwrap();
    assert_eq!(merged, 7 * tuned.model().config().n_layers);
    // Merged weights carry no autograd graph (inference would otherwise keep
    // every activation alive).
    let w = tuned.model().projection_weight(0, Projection::Q).unwrap();
    assert!(!w.track_op());
    assert_eq!(
        argmax(&tuned.score_window(&q_a, &window(&PASSAGES_A)).unwrap()),
        first_a
    );
    assert_eq!(
        argmax(&tuned.score_window(&q_b, &window(&PASSAGES_B)).unwrap()),
        first_b
    );
    // Merged into a GGUF file, the adapter gives the same ranking.
    let base = model_path(SMOLLM2.file).unwrap();
    let merged_path = dir.path().join("merged.gguf");
    let n = merge_into_gguf(&base, dir.path(), &merged_path, MergedType::Q8_0).unwrap();
    assert_eq!(n, 7 * tuned.model().config().n_layers);
    let tok = tokenizer_from_gguf_file(&merged_path).unwrap();
    let chat = ChatTemplate::from_optional(tok.chat_template.as_deref(), "", "").unwrap();
    let model = CausalLm::load(&merged_path, WeightMode::Quantized, &Device::Cpu).unwrap();
    let config = RerankerConfig {
        max_window: 4,
        ..RerankerConfig::default()
    };
    let mut from_file = LlmReranker::assemble(model, tok, chat, config, "merged".into()).unwrap();
    assert_eq!(
        argmax(&from_file.score_window(&q_a, &window(&PASSAGES_A)).unwrap()),
        first_a
    );
    assert_eq!(
        argmax(&from_file.score_window(&q_b, &window(&PASSAGES_B)).unwrap()),
        first_b
    );
    drop(from_file);
    std::fs::remove_file(&merged_path).unwrap();
    // Resuming continues from the last checkpoint (step 8) to step 9.
    let opts_more = TrainOptions {
        max_steps: Some(9),
        ..opts.clone()
    };
    let mut r3 = reranker(WeightMode::DequantizedF32).unwrap();
    // ...but only with the adapter options the checkpoint was written with.
    let mut other_layers = opts_more.clone();
    if let AdapterKind::Lora(c) = &mut other_layers.adapter {
        c.layers = Some(vec![28, 29]);
    }
    let err = train(
        &mut r3,
        &examples,
        &[],
        &other_layers,
        dir.path(),
        true,
        &mut |_| {},
    )
    .unwrap_err();
    let err = format!("{err:#}");
    // The run identity names what differs: the adapter's layers.
    assert!(
        err.contains("belongs to another run")
            && err.contains("adapter")
            && err.contains("layers=28,29"),
        "{err}"
    );
    let resumed = train(
        &mut r3,
        &examples,
        &[],
        &opts_more,
        dir.path(),
        true,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(resumed.steps, 9);
    // Bad adapter directories are refused clearly.
    let err = tuned
        .apply_adapter(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
}
