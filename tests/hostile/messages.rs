//! Rows: messages that say what to fix: an unsupported mirror scheme, the user's file named
//! rather than the cache's copy of it, warnings without terminal colours.

use super::pipeline::spec_with_mirror;
use super::*;

/// The project's spec with a `[corpus]` table reading its `stories.txt` as one story per line.
const CORPUS: &str =
    "\n[corpus]\ntrain_files = [\"stories.txt\"]\nval_files = []\nformat = \"lines\"\n";

fn with_corpus(project: &Project) {
    let mut spec = fs::read_to_string(project.spec_path()).unwrap();
    spec.push_str(CORPUS);
    fs::write(project.spec_path(), spec).unwrap();
}

pub fn rows() -> Vec<Row> {
    vec![
        Row {
            what: "an ftp:// mirror",
            files: &[(
                "pipeline.toml",
                "[pipeline]\nname = \"x\"\n[download]\nfiles = [{ name = \"a.txt\", mirrors = [\"ftp://example.com/a.txt\"] }]\n",
            )],
            args: &["run", "pipeline.toml", "--dry-run"],
            expect: Expect::Refused(
                "error: pipeline.toml:4: key `download.files[0].mirrors[0]`: ftp:// is not a scheme tinyllm can fetch; use https://, http://, file:// or a local path",
            ),
            ..ROW
        },
        Row {
            what: "an s3:// mirror after a working one",
            setup: Some(|project| {
                let spec = fs::read_to_string(project.spec_path()).unwrap();
                let spec = spec.replace("\"] }]", "\", \"s3://bucket/stories.txt\"] }]");
                fs::write(project.spec_path(), spec).unwrap();
            }),
            args: &["status", "pipeline.toml"],
            expect: Expect::Refused(
                "error: pipeline.toml:5: key `download.files[0].mirrors[1]`: s3:// is not a scheme tinyllm can fetch; use https://, http://, file:// or a local path",
            ),
            ..ROW
        },
        Row {
            what: "a local corpus that is not UTF-8 (named as the user's file, not the cache's copy)",
            setup: Some(|project| {
                fs::write(
                    project.path("stories.txt"),
                    b"Once upon a time.\n\xff\xfe\n",
                )
                .unwrap();
                with_corpus(project);
            }),
            args: &["run", "pipeline.toml", "--until", "train_vocab"],
            expect: Expect::Refused(
                "error: stage train_vocab failed: {dir}/stories.txt: invalid UTF-8 at byte 18",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a file of a local corpus folder that is not UTF-8 (named in the user's folder)",
            setup: Some(|project| {
                fs::create_dir_all(project.path("data/part")).unwrap();
                fs::write(project.path("data/part/b.txt"), b"Once.\n\xc3\n").unwrap();
                let spec = spec_with_mirror(&project.path("data").display().to_string())
                    .replace("name = \"stories.txt\", ", "name = \"data\", ");
                let corpus = "\n[corpus]\ntrain_files = [\"part/*.txt\"]\nval_files = []\n";
                fs::write(project.spec_path(), spec + corpus).unwrap();
            }),
            args: &["run", "pipeline.toml", "--until", "train_vocab"],
            expect: Expect::Refused(
                "error: stage train_vocab failed: {dir}/data/part/b.txt: invalid UTF-8 at byte 6",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a mirror that fails before one that works: a warning without terminal colours",
            setup: Some(|project| {
                let spec = fs::read_to_string(project.spec_path()).unwrap();
                let missing = project.path("missing.txt");
                let spec = spec.replace(
                    "mirrors = [\"",
                    &format!("mirrors = [\"{}\", \"", missing.display()),
                );
                fs::write(project.spec_path(), spec).unwrap();
            }),
            args: &["run", "pipeline.toml", "--until", "download"],
            expect: Expect::Warned(
                " WARN stories.txt: {dir}/missing.txt: No such file or directory (os error 2)",
            ),
            ..ROW
        },
        Row {
            what: "NO_COLOR set: a warning without colours",
            setup: Some(|project| {
                let spec = fs::read_to_string(project.spec_path()).unwrap();
                let spec = spec.replace("mirrors = [\"", "mirrors = [\"nowhere.txt\", \"");
                fs::write(project.spec_path(), spec).unwrap();
            }),
            args: &["run", "pipeline.toml", "--until", "download"],
            env: &[("NO_COLOR", "1")],
            expect: Expect::Warned(
                " WARN stories.txt: nowhere.txt: No such file or directory (os error 2)",
            ),
            ..ROW
        },
    ]
}
