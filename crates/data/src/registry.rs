//! The datasets firstrank knows by name: for each, its first-stage
//! candidates (rank_llm's cached retrieve results, BM25 and SPLADE++ top 100,
//! in rank_llm's retrieve_results JSON) and, where a checksum is known, its
//! qrels. Each file is pinned by size and checksum: SHA-256 where we hold a
//! copy that matches the upstream MD5, else the MD5 rank_llm publishes for
//! it. The URLs are those rank_llm downloads its candidates from (its
//! `rank_llm_data` repository) and Anserini's qrels files. A mirror laid out
//! like the data folder (`<base>/<dataset>/<file>`) replaces them all when
//! `FIRSTRANK_DATA_URL` names it.

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// First-stage candidates from the named retriever (`bm25`, `splade`).
    Candidates(&'static str),
    Qrels,
}

/// The checksum a file must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    Sha256(&'static str),
    Md5(&'static str),
}

/// One file of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFile {
    pub role: Role,
    /// The file's name in the dataset's folder (as in `../shared/data`).
    pub file: &'static str,
    /// Where it is published.
    pub url: &'static str,
    pub size: u64,
    pub checksum: Checksum,
}

/// A dataset by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dataset {
    pub name: &'static str,
    /// Other folder names it may have in an offline data folder.
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    pub files: &'static [DataFile],
}

impl Dataset {
    /// The file for `role`, if the registry has one.
    pub fn file(&self, role: Role) -> Option<&'static DataFile> {
        self.files.iter().find(|f| f.role == role)
    }

    /// The first stages it has candidates from.
    pub fn first_stages(&self) -> Vec<&'static str> {
        self.files
            .iter()
            .filter_map(|f| match f.role {
                Role::Candidates(s) => Some(s),
                Role::Qrels => None,
            })
            .collect()
    }
}

const fn bm25(url: &'static str, size: u64, checksum: Checksum) -> DataFile {
    DataFile {
        role: Role::Candidates("bm25"),
        file: "bm25-top100.json",
        url,
        size,
        checksum,
    }
}

const fn splade(url: &'static str, size: u64, checksum: Checksum) -> DataFile {
    DataFile {
        role: Role::Candidates("splade"),
        file: "splade-pp-ed-top100.json",
        url,
        size,
        checksum,
    }
}

const fn qrels(url: &'static str, size: u64, checksum: Checksum) -> DataFile {
    DataFile {
        role: Role::Qrels,
        file: "qrels.txt",
        url,
        size,
        checksum,
    }
}

/// `concat!` with the URL prefixes (macros, so the registry stays `static`).
macro_rules! rank_llm {
    ($path:literal) => {
        concat!(
            "https://github.com/castorini/rank_llm_data/raw/main/retrieve_results/",
            $path
        )
    };
}
macro_rules! anserini {
    ($file:literal) => {
        concat!(
            "https://raw.githubusercontent.com/castorini/anserini-tools/master/topics-and-qrels/",
            $file
        )
    };
}

use Checksum::{Md5, Sha256};

/// Every dataset firstrank can fetch by name.
pub static DATASETS: &[Dataset] = &[
    Dataset {
        name: "dl19",
        aliases: &[],
        description: "TREC DL 2019 passage (43 judged queries)",
        files: &[
            bm25(
                rank_llm!("BM25/retrieve_results_dl19_top100.json"),
                2_306_085,
                Sha256("4f3e4aba8bb68c1b38405da010f44537f31d3b5fff7088ef97c03caed1076674"),
            ),
            splade(
                rank_llm!("SPLADE_P_P_ENSEMBLE_DISTIL/retrieve_results_dl19_top100.json"),
                2_149_817,
                Sha256("2b4a11fe6877a4cb0138426add49b3b70bc2d46390ce5a9b0120cca26cec4099"),
            ),
            qrels(
                anserini!("qrels.dl19-passage.txt"),
                187_092,
                Sha256("8a1f10d550732e4cd91d7fc49846a3784de4040972f583e69285a88f3c5fee92"),
            ),
        ],
    },
    Dataset {
        name: "dl20",
        aliases: &[],
        description: "TREC DL 2020 passage (54 judged queries)",
        files: &[
            bm25(
                rank_llm!("BM25/retrieve_results_dl20_top100.json"),
                2_912_805,
                Sha256("68b0ea4515ea022de921d54d5a53b4e93ed2f2993d350323c3173e47f3cea9f0"),
            ),
            splade(
                rank_llm!("SPLADE_P_P_ENSEMBLE_DISTIL/retrieve_results_dl20_top100.json"),
                2_669_777,
                Sha256("58fc0d071956898e40384b781217f5a945b2b9dc049045ad9c865521e52a3fbd"),
            ),
            qrels(
                anserini!("qrels.dl20-passage.txt"),
                218_617,
                Sha256("60d4c34561f9687f8f73e0a752ba80ab80159b3e9c1bedd0a351f747ed6f5684"),
            ),
        ],
    },
    Dataset {
        name: "dl21",
        aliases: &[],
        description: "TREC DL 2021 passage (MS MARCO v2; candidates only)",
        files: &[
            bm25(
                rank_llm!("BM25/retrieve_results_dl21_top100.json"),
                2_516_810,
                Md5("3bdb78da7cde0a17fd82eb916dbab943"),
            ),
            splade(
                rank_llm!("SPLADE_P_P_ENSEMBLE_DISTIL/retrieve_results_dl21_top100.json"),
                2_171_181,
                Md5("7fdadcd231d87111a855a87766d696b5"),
            ),
        ],
    },
    Dataset {
        name: "dl22",
        aliases: &["dl22-unlabeled"],
        description:
            "TREC DL 2022 passage (MS MARCO v2; candidates only: firstrank's training pool)",
        files: &[
            bm25(
                rank_llm!("BM25/retrieve_results_dl22_top100.json"),
                3_567_700,
                Sha256("ff27f599af505469ef17d102198324396a7577966e7906766ddc6a51894f8e7e"),
            ),
            splade(
                rank_llm!("SPLADE_P_P_ENSEMBLE_DISTIL/retrieve_results_dl22_top100.json"),
                3_092_371,
                Md5("facb8e30006a42e22b9ccafafa5b76ec"),
            ),
        ],
    },
    Dataset {
        name: "covid",
        aliases: &["trec-covid"],
        description: "BEIR TREC-COVID (candidates only)",
        files: &[
            bm25(
                rank_llm!("BM25/retrieve_results_covid_top100.json"),
                9_113_367,
                Md5("84ee088e57c6bd8e274b25ce45406317"),
            ),
            splade(
                rank_llm!("SPLADE_P_P_ENSEMBLE_DISTIL/retrieve_results_covid_top100.json"),
                7_711_302,
                Md5("bbb9b7e8afb53df48b0a2f23e7392cca"),
            ),
        ],
    },
    Dataset {
        name: "news",
        aliases: &["trec-news"],
        description: "BEIR TREC-NEWS (candidates only)",
        files: &[
            bm25(
                rank_llm!("BM25/retrieve_results_news_top100.json"),
                41_497_717,
                Md5("e0129de37196c76ad8df7afab5c7a04e"),
            ),
            splade(
                rank_llm!("SPLADE_P_P_ENSEMBLE_DISTIL/retrieve_results_news_top100.json"),
                26_193_891,
                Md5("e4c1e7b2fd02be3fcfa4794f7d6211f9"),
            ),
        ],
    },
];

/// The dataset called `name` (or one of its aliases).
pub fn dataset(name: &str) -> Option<&'static Dataset> {
    DATASETS
        .iter()
        .find(|d| d.name == name || d.aliases.contains(&name))
}

/// The known names, for error messages.
pub fn names() -> String {
    DATASETS
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}
