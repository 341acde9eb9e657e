//! End-to-end: real git and git-lfs driving git-theta's filter in a sandbox.

mod common;

use std::path::Path;

use common::{Sandbox, objects, poke_tensor, sha256_file};

fn example(s: &Sandbox, repo: &Path, dir: &str, seed: &str, extra: &[&str]) {
    let mut args = vec!["theta", "example", dir, "--seed", seed];
    args.extend_from_slice(extra);
    s.git(repo, &args);
}

fn assert_clean_status(s: &Sandbox, repo: &Path) {
    assert_eq!(
        s.git(repo, &["status", "--porcelain"]),
        "",
        "git status is clean"
    );
}

#[test]
fn commits_store_only_changed_chunks_and_checkouts_are_byte_exact() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    // Dense snapshots only: this test is about chunk-level deduplication
    // (tests/updates.rs covers sparse and factored updates).
    s.git(&repo, &["config", "theta.maxChain", "0"]);
    example(&s, &repo, "m", "1", &[]);
    let model = repo.join("m/model.safetensors");
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "v1"]);
    let v1 = sha256_file(&model);
    let stored = s.git(&repo, &["show", "HEAD:m/model.safetensors"]);
    assert!(stored.starts_with("{\"git_theta_manifest\":1,"), "{stored}");
    assert!(stored.contains("\"name\":\"model.embed_tokens.weight\""));
    assert_eq!(
        s.git(&repo, &["theta", "ls-files"]),
        "m/model.safetensors\n"
    );
    let after_v1 = objects(&repo).len();
    assert!(after_v1 > 10);

    // One changed row of the embedding (chunked) and one changed norm.
    poke_tensor(&model, "model.embed_tokens.weight");
    poke_tensor(&model, "model.norm.weight");
    assert_eq!(
        s.git(&repo, &["status", "--porcelain"]),
        " M m/model.safetensors\n"
    );
    s.git(&repo, &["commit", "-qam", "v2"]);
    let v2 = sha256_file(&model);
    assert_ne!(v1, v2);
    assert_eq!(
        objects(&repo).len(),
        after_v1 + 2,
        "one embedding chunk, one norm"
    );
    let diff = s.git(&repo, &["diff", "--stat", "HEAD~1", "HEAD"]);
    assert!(diff.contains("m/model.safetensors"), "{diff}");

    s.git(&repo, &["checkout", "-q", "HEAD~1"]);
    assert_eq!(sha256_file(&model), v1);
    assert_clean_status(&s, &repo);
    s.git(&repo, &["checkout", "-q", "main"]);
    assert_eq!(sha256_file(&model), v2);
    assert_clean_status(&s, &repo);

    // Branches, reset --hard, stash.
    s.git(&repo, &["switch", "-qc", "other", "HEAD~1"]);
    assert_eq!(sha256_file(&model), v1);
    s.git(&repo, &["switch", "-q", "main"]);
    assert_eq!(sha256_file(&model), v2);
    poke_tensor(&model, "model.layers.0.mlp.up_proj.weight");
    s.git(&repo, &["reset", "-q", "--hard"]);
    assert_eq!(sha256_file(&model), v2);
    poke_tensor(&model, "model.layers.1.mlp.up_proj.weight");
    let v3 = sha256_file(&model);
    s.git(&repo, &["stash", "-q"]);
    assert_eq!(sha256_file(&model), v2);
    assert_clean_status(&s, &repo);
    s.git(&repo, &["stash", "pop", "-q"]);
    assert_eq!(sha256_file(&model), v3);
    s.git(&repo, &["checkout", "--", "."]);

    // Rename: same manifest, new path.
    s.git(
        &repo,
        &["mv", "m/model.safetensors", "m/renamed.safetensors"],
    );
    s.git(&repo, &["commit", "-qm", "rename"]);
    std::fs::remove_file(repo.join("m/renamed.safetensors")).expect("rm");
    s.git(&repo, &["checkout", "--", "."]);
    assert_eq!(sha256_file(&repo.join("m/renamed.safetensors")), v2);
    assert_clean_status(&s, &repo);
}

#[test]
fn several_files_and_a_sharded_folder() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    example(&s, &repo, "a", "1", &[]);
    example(&s, &repo, "b", "2", &[]);
    example(&s, &repo, "sharded", "3", &["--shard-size", "3MB"]);
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "models"]);
    let tracked = s.git(&repo, &["theta", "ls-files"]);
    let shards: Vec<&str> = tracked
        .lines()
        .filter(|l| l.starts_with("sharded/"))
        .collect();
    assert!(shards.len() >= 3, "{tracked}");
    assert!(
        shards.iter().all(|l| l.ends_with(".safetensors")),
        "{tracked}"
    );
    let index = s.git(
        &repo,
        &["show", "HEAD:sharded/model.safetensors.index.json"],
    );
    assert!(
        index.contains("weight_map"),
        "the index stays a normal file"
    );

    let mut sums = Vec::new();
    for f in tracked.lines() {
        sums.push((f.to_owned(), sha256_file(&repo.join(f))));
        std::fs::remove_file(repo.join(f)).expect("rm");
    }
    s.git(&repo, &["checkout", "--", "."]);
    for (f, sum) in sums {
        assert_eq!(sha256_file(&repo.join(&f)), sum, "{f}");
    }
    assert_clean_status(&s, &repo);
    // Same shapes and header in `a` and `b`: only tensor objects differ,
    // and two identical copies would add no object at all.
    std::fs::copy(
        repo.join("a/model.safetensors"),
        repo.join("copy.safetensors"),
    )
    .expect("cp");
    let before = objects(&repo).len();
    s.git(&repo, &["add", "copy.safetensors"]);
    assert_eq!(
        objects(&repo).len(),
        before,
        "an identical file stores nothing"
    );
}

#[test]
fn missing_and_corrupt_objects_fail_loudly() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    example(&s, &repo, "m", "1", &[]);
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "v1"]);
    let manifest = s.git(&repo, &["show", "HEAD:m/model.safetensors"]);
    let line = manifest
        .lines()
        .find(|l| l.contains("\"model.norm.weight\""))
        .expect("norm line");
    let oid = line.split("\"oid\":\"").nth(1).expect("oid")[..64].to_owned();
    let object = repo
        .join(".git/lfs/objects")
        .join(&oid[..2])
        .join(&oid[2..4])
        .join(&oid);
    let good = std::fs::read(&object).expect("object");
    let model = repo.join("m/model.safetensors");

    // Replaced by other bytes of the same size (a new file, as a tool
    // copying over it would leave): the record that `git add` verified the
    // object no longer applies to it, so it is hashed, and refused.
    let bad = object.with_extension("bad");
    std::fs::write(&bad, vec![0u8; good.len()]).expect("corrupt");
    std::fs::rename(&bad, &object).expect("replace");
    std::fs::remove_file(&model).expect("rm");
    let out = s.run(&repo, "git", &["checkout", "--", "m/model.safetensors"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "corrupt object must fail");
    assert!(
        err.contains("model.norm.weight") && err.contains("corrupt") && err.contains(&oid),
        "{err}"
    );

    std::fs::remove_file(&object).expect("rm object");
    let out = s.run(&repo, "git", &["checkout", "--", "m/model.safetensors"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "missing object must fail");
    assert!(
        err.contains("model.norm.weight") && err.contains("missing") && err.contains(&oid),
        "{err}"
    );

    std::fs::write(&object, &good).expect("restore");
    s.git(&repo, &["checkout", "--", "m/model.safetensors"]);
    assert_clean_status(&s, &repo);
}

#[test]
fn an_interrupted_add_leaves_the_repository_consistent() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    example(&s, &repo, "m", "1", &[]);
    let model = repo.join("m/model.safetensors");
    let sum = sha256_file(&model);
    // The filter aborts (as if killed) after storing a few objects.
    let out = s
        .cmd(&repo, "git", &["add", "."])
        .env("GIT_THETA_FAULT_ABORT_AFTER_OBJECTS", "3")
        .output()
        .expect("spawn");
    assert!(!out.status.success(), "the add fails");
    assert!(!repo.join(".git/index.lock").exists());
    let staged = s.git(&repo, &["diff", "--cached", "--name-only"]);
    assert!(!staged.contains("model.safetensors"), "{staged}");
    // Whatever reached the store is whole and named by its hash.
    let partial = objects(&repo);
    assert!(!partial.is_empty());
    for p in &partial {
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        assert_eq!(sha256_file(p), name);
    }
    s.git(&repo, &["fsck", "--no-progress"]);
    // And the add can simply be run again.
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "v1"]);
    std::fs::remove_file(&model).expect("rm");
    s.git(&repo, &["checkout", "--", "."]);
    assert_eq!(sha256_file(&model), sum);
}

#[test]
fn install_track_untrack_are_idempotent() {
    let s = Sandbox::new();
    s.git(&s.home, &["theta", "install"]);
    let cfg = s.git(
        &s.home,
        &["config", "--global", "--get", "filter.theta.process"],
    );
    assert_eq!(cfg.trim(), "git-theta filter-process");
    let repo = s.repo("repo");
    let again = s.git(&repo, &["theta", "track", "*.safetensors", "weights/*.bin"]);
    assert!(again.contains("already tracked"), "{again}");
    let attrs = std::fs::read_to_string(repo.join(".gitattributes")).expect("attrs");
    assert_eq!(
        attrs,
        "*.safetensors filter=theta diff=theta merge=theta\nweights/*.bin filter=theta diff=theta merge=theta\n"
    );
    s.git(&repo, &["theta", "untrack", "weights/*.bin"]);
    let attrs = std::fs::read_to_string(repo.join(".gitattributes")).expect("attrs");
    assert_eq!(attrs, "*.safetensors filter=theta diff=theta merge=theta\n");
    s.git(&s.home, &["theta", "uninstall"]);
    s.git(&s.home, &["theta", "uninstall"]);
    let out = s.run(
        &s.home,
        "git",
        &["config", "--global", "--get", "filter.theta.process"],
    );
    assert!(!out.status.success(), "removed");
}

#[test]
fn status_names_staged_and_unstaged_tensors() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    example(&s, &repo, "m", "1", &[]);
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "v1"]);
    let out = s.git(&repo, &["theta", "status"]);
    assert!(out.contains("nothing changed"), "{out}");
    let model = repo.join("m/model.safetensors");
    poke_tensor(&model, "model.norm.weight");
    s.git(&repo, &["add", "."]);
    poke_tensor(&model, "model.layers.0.mlp.up_proj.weight");
    let out = s.git(&repo, &["theta", "status"]);
    let staged = out.find("staged (HEAD → index): 1 tensor(s)\n    modified  model.norm.weight");
    let unstaged = out.find(
        "not staged (index → working tree): 1 tensor(s)\n    modified  model.layers.0.mlp.up_proj.weight",
    );
    assert!(staged.is_some() && unstaged.is_some(), "{out}");
}

#[test]
fn push_sends_objects_through_git_lfs_and_clone_fetches_only_what_it_needs() {
    let s = Sandbox::new();
    let remote = s.tmp.path().join("remote.git");
    std::fs::create_dir_all(&remote).expect("mkdir");
    s.git(&remote, &["init", "-q", "--bare"]);
    let url = format!("file://{}", remote.display());
    let repo = s.repo("repo");
    // A hook already there (as git-lfs's would be) keeps running.
    let hooks = repo.join(".git/hooks");
    std::fs::create_dir_all(&hooks).expect("hooks");
    std::fs::write(
        hooks.join("pre-push"),
        "#!/bin/sh\ncat > \"$(git rev-parse --git-dir)/old-hook-ran\"\n",
    )
    .expect("hook");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            hooks.join("pre-push"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
    }
    s.git(&repo, &["theta", "install", "--local"]);
    s.git(&repo, &["theta", "install", "--local"]);
    // Dense snapshots: v2 then needs none of v1's norm (tests/updates.rs
    // covers clones of update chains, which need their base objects).
    s.git(&repo, &["config", "theta.maxChain", "0"]);
    example(&s, &repo, "m", "1", &[]);
    let model = repo.join("m/model.safetensors");
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "v1"]);
    let v1_objects = objects(&repo).len();
    poke_tensor(&model, "model.norm.weight");
    s.git(&repo, &["commit", "-qam", "v2"]);
    let v2 = sha256_file(&model);
    s.git(&repo, &["remote", "add", "origin", &url]);
    s.git(&repo, &["push", "-q", "origin", "main"]);
    let old_hook_input =
        std::fs::read_to_string(repo.join(".git/old-hook-ran")).expect("chained hook ran");
    assert!(
        old_hook_input.contains("refs/heads/main"),
        "{old_hook_input}"
    );
    let remote_objects = objects_under(&remote.join("lfs/objects"));
    assert_eq!(remote_objects, objects(&repo).len(), "everything pushed");
    assert_eq!(remote_objects, v1_objects + 1);

    let clone = s.tmp.path().join("clone");
    let out = s.run(s.tmp.path(), "git", &["clone", "-q", &url, "clone"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&clone.join("m/model.safetensors")), v2);
    assert_clean_status(&s, &clone);
    // Only v2's objects came: v1's old norm weight did not.
    assert_eq!(objects(&clone).len(), v1_objects);
    s.git(&clone, &["checkout", "-q", "HEAD~1"]);
    assert_eq!(objects(&clone).len(), v1_objects + 1, "fetched on checkout");
    assert_clean_status(&s, &clone);
}

fn objects_under(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn single_shot_clean_and_smudge_match_the_filter_process() {
    use std::io::Write;
    use std::process::Stdio;
    let s = Sandbox::new();
    let repo = s.repo("repo");
    example(&s, &repo, "m", "1", &[]);
    s.git(&repo, &["add", "."]);
    let staged = s.git(&repo, &["cat-file", "blob", ":m/model.safetensors"]);
    let model = std::fs::read(repo.join("m/model.safetensors")).expect("read");
    let pipe = |args: &[&str], input: &[u8]| {
        let mut child = s
            .cmd(&repo, "git-theta", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let data = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data).expect("write"));
        let out = child.wait_with_output().expect("wait");
        writer.join().expect("writer");
        assert!(out.status.success());
        out.stdout
    };
    let manifest = pipe(&["clean", "m/model.safetensors"], &model);
    assert_eq!(String::from_utf8(manifest.clone()).expect("utf-8"), staged);
    assert_eq!(pipe(&["smudge", "m/model.safetensors"], &manifest), model);
}
