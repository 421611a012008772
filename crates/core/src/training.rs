//! Training lists for FIRST: listwise examples in rank_zephyr's conversation
//! format, and how firstrank makes them from first-stage candidates and
//! relevance labels.
//!
//! One list is one JSON line:
//! `{"id": "...", "conversations": [{"from": "system", "value": ...},
//! {"from": "human", "value": <the listwise prompt>}, {"from": "gpt",
//! "value": "[C] > [A] > ..."}]}` — the format of RankZephyr's training data,
//! which FIRST trained on. Reading also accepts `role`/`content` keys and the
//! role names `user`/`assistant`.
//!
//! Lists made here (see [`make_lists`]) sample windows from each query's
//! candidate list (the first-stage top window, then contiguous slices and
//! random subsets), show each window's passages in first-stage order (as
//! reranking does) or shuffled, and order the target by label (qrels grade or a
//! teacher's score), ties broken by first-stage rank. The prompt is the same
//! [`crate::prompt`] text that reranking builds, so training and inference
//! see identical inputs.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::prompt::{self, IdentifierStyle, PromptOptions, PromptTemplate, TokenCounter};
use crate::significance::SplitMix64;
use crate::{Candidate, Error, Request, Result};

/// One training example: a rendered listwise prompt and its target permutation.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingList {
    pub id: String,
    pub system: Option<String>,
    pub user: String,
    /// The assistant turn, e.g. `[C] > [A] > [B]`.
    pub target: String,
}

#[derive(Serialize, Deserialize)]
struct Turn {
    #[serde(alias = "role")]
    from: String,
    #[serde(alias = "content")]
    value: String,
}

#[derive(Serialize, Deserialize)]
struct ListRecord {
    #[serde(default)]
    id: Option<serde_json::Value>,
    conversations: Vec<Turn>,
}

impl TrainingList {
    /// The rank_zephyr JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        let mut conversations = Vec::with_capacity(3);
        if let Some(s) = &self.system {
            conversations.push(Turn {
                from: "system".into(),
                value: s.clone(),
            });
        }
        conversations.push(Turn {
            from: "human".into(),
            value: self.user.clone(),
        });
        conversations.push(Turn {
            from: "gpt".into(),
            value: self.target.clone(),
        });
        let record = ListRecord {
            id: Some(serde_json::Value::String(self.id.clone())),
            conversations,
        };
        // Serializing plain strings cannot fail.
        serde_json::to_string(&record).unwrap_or_default()
    }

    /// The target as 0-based passage indices, checked to be a permutation of
    /// `0..n` where `n` is the number of identifiers in the target. Errors say
    /// what is wrong with it.
    pub fn target_order(&self, style: IdentifierStyle) -> std::result::Result<Vec<usize>, String> {
        let mut order = Vec::new();
        for part in self.target.split('>') {
            let id = part
                .trim()
                .strip_prefix('[')
                .and_then(|p| p.strip_suffix(']'))
                .ok_or_else(|| {
                    format!("target `{}`: `{}` is not `[X]`", self.target, part.trim())
                })?;
            let index = match style {
                IdentifierStyle::Alpha => {
                    let mut chars = id.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c @ 'A'..='Z'), None) => c as usize - 'A' as usize,
                        _ => return Err(format!("identifier `{id}` is not a letter A..Z")),
                    }
                }
                IdentifierStyle::Numeric => match id.parse::<usize>() {
                    Ok(n) if n >= 1 => n - 1,
                    _ => return Err(format!("identifier `{id}` is not a number from 1")),
                },
            };
            order.push(index);
        }
        let n = order.len();
        let mut seen = vec![false; n];
        for &i in &order {
            if i >= n || std::mem::replace(&mut seen[i], true) {
                return Err(format!(
                    "target `{}` is not a permutation of the first {n} identifiers",
                    self.target
                ));
            }
        }
        Ok(order)
    }
}

/// Reads rank_zephyr-style training lists (JSON lines). Errors name the file
/// and line.
pub fn read_training_lists(path: &Path) -> Result<Vec<TrainingList>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut lists = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", i + 1);
        let record: ListRecord = serde_json::from_str(&line).map_err(|e| {
            Error::input(
                path,
                &at,
                format!("expected {{\"conversations\": [{{\"from\", \"value\"}}, ...]}}: {e}"),
            )
        })?;
        let mut system = None;
        let mut user = None;
        let mut target = None;
        for turn in record.conversations {
            match turn.from.as_str() {
                "system" => system = Some(turn.value),
                "human" | "user" => user = Some(turn.value),
                "gpt" | "assistant" => target = Some(turn.value),
                other => {
                    return Err(Error::input(
                        path,
                        &at,
                        format!(
                            "unknown turn `{other}`; expected system, human/user or gpt/assistant"
                        ),
                    ))
                }
            }
        }
        let (Some(user), Some(target)) = (user, target) else {
            return Err(Error::input(
                path,
                &at,
                "a list needs a human (user) turn and a gpt (assistant) turn",
            ));
        };
        let id = match record.id {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => format!("{}", i + 1),
        };
        lists.push(TrainingList {
            id,
            system,
            user,
            target,
        });
    }
    if lists.is_empty() {
        return Err(Error::input(path, "file", "no training lists in it"));
    }
    Ok(lists)
}

/// The order a sampled window's passages are shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Presentation {
    /// First-stage order, as reranking shows them: the model learns to
    /// correct the first stage.
    #[default]
    FirstStage,
    /// A random order: the model must rank from the texts alone.
    Shuffled,
}

/// How windows are drawn from one query's candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSampling {
    /// Passages per window (at most the identifier alphabet).
    pub window: usize,
    /// Windows per query: the first-stage top window, then alternately a
    /// contiguous slice at a random offset and a random subset.
    pub per_query: usize,
    /// Only the first this many candidates are sampled from.
    pub depth: usize,
    pub seed: u64,
    pub presentation: Presentation,
}

impl Default for WindowSampling {
    fn default() -> Self {
        Self {
            window: 20,
            per_query: 20,
            depth: 100,
            seed: 1,
            presentation: Presentation::FirstStage,
        }
    }
}

/// Candidate indices of each sampled window, in presentation order.
pub fn sample_windows(
    n_candidates: usize,
    s: &WindowSampling,
    rng: &mut SplitMix64,
) -> Vec<Vec<usize>> {
    let pool = n_candidates.min(s.depth);
    let w = s.window.min(pool);
    if w < 2 {
        return Vec::new();
    }
    let mut windows = Vec::with_capacity(s.per_query);
    for k in 0..s.per_query {
        let mut picked: Vec<usize> = if k == 0 {
            (0..w).collect()
        } else if k % 2 == 1 {
            let start = rng.below(pool - w + 1);
            (start..start + w).collect()
        } else {
            let mut all: Vec<usize> = (0..pool).collect();
            rng.shuffle(&mut all);
            all.truncate(w);
            all
        };
        // Shuffled either way, so both presentations draw the same windows.
        rng.shuffle(&mut picked);
        if s.presentation == Presentation::FirstStage {
            picked.sort_unstable();
        }
        windows.push(picked);
    }
    windows
}

/// Window positions in target order: label descending, ties by first-stage
/// rank (`ranks`, lower is better). NaN labels sort last.
pub fn target_permutation(labels: &[f64], ranks: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| {
        let (la, lb) = (labels[a], labels[b]);
        let la = if la.is_nan() { f64::NEG_INFINITY } else { la };
        let lb = if lb.is_nan() { f64::NEG_INFINITY } else { lb };
        lb.total_cmp(&la).then(ranks[a].cmp(&ranks[b]))
    });
    order
}

/// `[C] > [A] > ...` for window positions in `order`.
pub fn permutation_text(order: &[usize], style: IdentifierStyle) -> Result<String> {
    let ids = order
        .iter()
        .map(|&i| style.identifier(i).map(|id| format!("[{id}]")))
        .collect::<Result<Vec<_>>>()?;
    Ok(ids.join(" > "))
}

/// Reciprocal-rank fusion (RRF) of a query's labels with its first-stage order: candidate `i`
/// (first-stage rank `r_i`, and rank `t_i` under the labels, ties by first-stage rank; both
/// from 1) gets `1/(k + t_i) + weight/(k + r_i)`. Targets made from these keep the part of the
/// first-stage order the teacher does not contradict, which is what reranking the first-stage
/// top window starts from; `weight` 0 keeps the teacher's order. Docids without a label count
/// as `default_label`; a repeated docid keeps its first rank.
pub fn fuse_with_first_stage(
    candidates: &[Candidate],
    labels: &HashMap<String, f64>,
    default_label: f64,
    weight: f64,
    k: f64,
) -> HashMap<String, f64> {
    let mut docids: Vec<&str> = Vec::with_capacity(candidates.len());
    for c in candidates {
        if !docids.contains(&c.docid.as_str()) {
            docids.push(&c.docid);
        }
    }
    let label_of: Vec<f64> = docids
        .iter()
        .map(|d| labels.get(*d).copied().unwrap_or(default_label))
        .collect();
    let first_stage: Vec<usize> = (0..docids.len()).collect();
    let teacher_order = target_permutation(&label_of, &first_stage);
    let mut fused = HashMap::with_capacity(docids.len());
    for (teacher_rank, &i) in teacher_order.iter().enumerate() {
        let score = 1.0 / (k + (teacher_rank + 1) as f64) + weight / (k + (i + 1) as f64);
        fused.insert(docids[i].to_string(), score);
    }
    fused
}

/// Makes training lists for one query: samples windows, renders each with
/// `template`/`options`, and orders the target by `labels` (docid → grade or
/// teacher score; docids without a label count as `default_label`).
#[allow(clippy::too_many_arguments)]
pub fn make_lists(
    request: &Request,
    labels: &HashMap<String, f64>,
    default_label: f64,
    template: &PromptTemplate,
    options: &PromptOptions,
    counter: Option<&dyn TokenCounter>,
    sampling: &WindowSampling,
    rng: &mut SplitMix64,
) -> Result<Vec<TrainingList>> {
    if let Some(max) = template.identifiers.max_passages() {
        if sampling.window > max {
            return Err(Error::Invalid(format!(
                "a window of {} passages is larger than the identifier alphabet ({max} identifiers)",
                sampling.window
            )));
        }
    }
    let windows = sample_windows(request.candidates.len(), sampling, rng);
    let mut lists = Vec::with_capacity(windows.len());
    for (k, picked) in windows.iter().enumerate() {
        let cands: Vec<Candidate> = picked
            .iter()
            .map(|&i| request.candidates[i].clone())
            .collect();
        let window_labels: Vec<f64> = cands
            .iter()
            .map(|c| labels.get(&c.docid).copied().unwrap_or(default_label))
            .collect();
        let order = target_permutation(&window_labels, picked);
        let p = prompt::build(&request.query.text, &cands, template, options, counter)
            .map_err(|e| Error::Invalid(format!("query {}: {e:#}", request.query.qid)))?;
        lists.push(TrainingList {
            id: format!("{}-{k}", request.query.qid),
            system: Some(p.system),
            user: p.user,
            target: permutation_text(&order, template.identifiers)?,
        });
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Query;

    #[test]
    fn first_stage_fusion_moves_the_target_between_teacher_and_first_stage() {
        let cands: Vec<Candidate> = ["a", "b", "c", "d", "a"]
            .iter()
            .map(|d| Candidate {
                docid: d.to_string(),
                score: 0.0,
                title: None,
                text: String::new(),
            })
            .collect();
        // Teacher order b, a, d, c (c has no label: default 1.0); first stage a, b, c, d.
        let labels: HashMap<String, f64> = [("a", 3.0), ("b", 4.0), ("d", 2.0)]
            .iter()
            .map(|(d, l)| (d.to_string(), *l))
            .collect();
        let order = |w: f64| {
            let fused = fuse_with_first_stage(&cands, &labels, 1.0, w, 1.0);
            assert_eq!(fused.len(), 4);
            let mut ds: Vec<(&String, &f64)> = fused.iter().collect();
            ds.sort_by(|x, y| y.1.total_cmp(x.1));
            ds.iter()
                .map(|(d, _)| d.as_str())
                .collect::<Vec<_>>()
                .join("")
        };
        assert_eq!(order(0.0), "badc");
        // k = 1: a = 1/3 + w/2, b = 1/2 + w/3, c = 1/5 + w/4, d = 1/4 + w/5.
        assert_eq!(order(0.5), "badc");
        assert_eq!(order(2.0), "abcd");
        let fused = fuse_with_first_stage(&cands, &labels, 1.0, 2.0, 1.0);
        assert!((fused["a"] - (1.0 / 3.0 + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn target_order_parses_and_validates() {
        let l = |t: &str| TrainingList {
            id: "x".into(),
            system: None,
            user: "u".into(),
            target: t.into(),
        };
        assert_eq!(
            l("[C] > [A] > [B]").target_order(IdentifierStyle::Alpha),
            Ok(vec![2, 0, 1])
        );
        assert_eq!(
            l("[2] > [1]").target_order(IdentifierStyle::Numeric),
            Ok(vec![1, 0])
        );
        assert!(l("[C] > [A]").target_order(IdentifierStyle::Alpha).is_err());
        assert!(l("[A] > [A]").target_order(IdentifierStyle::Alpha).is_err());
        assert!(l("A > B").target_order(IdentifierStyle::Alpha).is_err());
    }

    #[test]
    fn permutation_breaks_ties_by_first_stage_rank() {
        // grades 1, 3, 1, 0 at first-stage ranks 5, 9, 2, 0
        let order = target_permutation(&[1.0, 3.0, 1.0, 0.0], &[5, 9, 2, 0]);
        assert_eq!(order, vec![1, 2, 0, 3]);
        assert_eq!(
            permutation_text(&order, IdentifierStyle::Alpha).unwrap(),
            "[B] > [C] > [A] > [D]"
        );
    }

    #[test]
    fn sampled_windows_are_distinct_indices_and_first_is_the_top() {
        let s = WindowSampling {
            window: 5,
            per_query: 6,
            depth: 30,
            seed: 3,
            presentation: Presentation::Shuffled,
        };
        let mut rng = SplitMix64(s.seed);
        let ws = sample_windows(40, &s, &mut rng);
        assert_eq!(ws.len(), 6);
        let mut top = ws[0].clone();
        top.sort();
        assert_eq!(top, vec![0, 1, 2, 3, 4]);
        for w in &ws {
            let mut u = w.clone();
            u.sort();
            u.dedup();
            assert_eq!(u.len(), 5);
            assert!(w.iter().all(|&i| i < 30));
        }
        // Contiguous slice (odd k).
        let mut slice = ws[1].clone();
        slice.sort();
        assert_eq!(slice[4] - slice[0], 4);
        // First-stage presentation: the same windows, sorted.
        let ordered = sample_windows(
            40,
            &WindowSampling {
                presentation: Presentation::FirstStage,
                ..s
            },
            &mut SplitMix64(s.seed),
        );
        for (o, w) in ordered.iter().zip(&ws) {
            let mut sorted = w.clone();
            sorted.sort();
            assert_eq!(o, &sorted);
        }
    }

    #[test]
    fn lists_round_trip_and_follow_labels() {
        let request = Request {
            query: Query {
                qid: "q1".into(),
                text: "what is rust".into(),
                instruction: None,
            },
            candidates: (0..4)
                .map(|i| Candidate {
                    docid: format!("d{i}"),
                    score: 10.0 - i as f64,
                    title: None,
                    text: format!("passage number {i}"),
                })
                .collect(),
        };
        let labels: HashMap<String, f64> =
            [("d2".to_string(), 2.0), ("d3".to_string(), 1.0)].into();
        let s = WindowSampling {
            window: 4,
            per_query: 2,
            depth: 100,
            seed: 7,
            presentation: Presentation::Shuffled,
        };
        let mut rng = SplitMix64(s.seed);
        let template = PromptTemplate::rank_zephyr_alpha();
        let lists = make_lists(
            &request,
            &labels,
            0.0,
            &template,
            &PromptOptions::rank_llm(),
            None,
            &s,
            &mut rng,
        )
        .unwrap();
        assert_eq!(lists.len(), 2);
        for l in &lists {
            let order = l.target_order(IdentifierStyle::Alpha).unwrap();
            // The passage shown first in the target must be d2's text.
            let first_id = format!("[{}]", (b'A' + order[0] as u8) as char);
            let at = l.user.find(&first_id).unwrap();
            assert!(
                l.user[at..].starts_with(&format!("{first_id} passage number 2")),
                "{}",
                l.user
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lists.jsonl");
        let text: String = lists.iter().map(|l| l.to_json_line() + "\n").collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(read_training_lists(&path).unwrap(), lists);
        let too_big = WindowSampling { window: 27, ..s };
        let err = make_lists(
            &request,
            &labels,
            0.0,
            &template,
            &PromptOptions::rank_llm(),
            None,
            &too_big,
            &mut rng,
        )
        .unwrap_err();
        assert!(err.to_string().contains("identifier alphabet"), "{err}");
    }

    #[test]
    fn bad_list_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(
            &path,
            "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"gpt\", \"value\": \"[A]\"}]}\n{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}]}\n",
        )
        .unwrap();
        let err = read_training_lists(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("gpt"), "{err}");
        std::fs::write(&path, "not json\n").unwrap();
        let err = read_training_lists(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
