// Shared by the binaries' build scripts (`include!`d): sets `CARGA_COMMIT` to the commit being
// built, for `--version`. `CARGA_COMMIT` in the environment wins (a container build has no
// `.git`); otherwise `git rev-parse`, else "unknown". Reruns when HEAD or its branch moves.

fn emit_commit() {
    println!("cargo:rerun-if-env-changed=CARGA_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let mut watched = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(format!("{dir}/{branch}"));
        }
        // A path that does not exist would make cargo rerun this script on every build.
        for path in watched.iter().filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("CARGA_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=CARGA_COMMIT={commit}");
}
