//! firstrank-core: everything around the model that must be exact, and nothing
//! that needs an ML framework. Candidate formats (read and write), the
//! listwise prompt, window strategies behind the `WindowScorer` seam, and
//! trec_eval-compatible metrics. Compiles in seconds and is tested without models.

pub mod candidate;
pub mod chat;
pub mod chunk;
pub mod error;
pub mod formats;
pub mod metrics;
pub mod pointwise;
pub mod prompt;
pub mod qrels;
pub mod significance;
#[doc(hidden)]
pub mod testing;
pub mod textfix;
pub mod training;
pub mod window;

pub use candidate::{Candidate, Query, Request};
pub use error::{Error, Result};
