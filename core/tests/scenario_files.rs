//! Scenario files that name something twice are refused, naming the field and both uses: the
//! second entry would otherwise silently replace the first (an H100 node turned A100).

use qm_core::scenario::{ClusterFile, JobsFile, Scenario, TeamsFile};

fn cluster(text: &str) -> ClusterFile {
    toml::from_str(text).unwrap()
}

fn teams(text: &str) -> TeamsFile {
    toml::from_str(text).unwrap()
}

const POOL: &str = "kind = \"gpu\"\ndevices = 8\ncount = 1\n";

#[test]
fn a_pool_named_twice_is_refused() {
    let text = format!(
        "[[pool]]\nname = \"dgx\"\nmodel = \"nvidia-h100-80gb-hbm3\"\n{POOL}\n[[pool]]\nname = \"dgx\"\nmodel = \"nvidia-a100-80gb\"\n{POOL}"
    );
    let err = cluster(&text).nodes().unwrap_err().to_string();
    assert_eq!(err, "pool[1].name: \"dgx\" is also pool[0]'s name");
}

#[test]
fn a_team_or_a_priority_class_named_twice_is_refused() {
    let quota = "[[team.quota]]\nflavor = \"gpu/m\"\nnominal = 8\n";
    let twice = teams(&format!("[[team]]\nname = \"vision\"\n{quota}\n[[team]]\nname = \"vision\"\n{quota}"));
    assert_eq!(twice.teams().unwrap_err().to_string(), "team[1].name: \"vision\" is also team[0]'s name");
    let classes = format!("[[priority_class]]\nname = \"high\"\nvalue = 100\n\n[[priority_class]]\nname = \"high\"\nvalue = 5\n\n[[team]]\nname = \"vision\"\n{quota}");
    let err = teams(&classes).teams().unwrap_err().to_string();
    assert_eq!(err, "priority_class[1].name: \"high\" is also priority_class[0]'s name");
    let jobs: JobsFile = toml::from_str("now_s = 0\njob = []").unwrap();
    let built =
        Scenario::build(&cluster(&format!("[[pool]]\nname = \"p\"\nmodel = \"m\"\n{POOL}")), &teams(&classes), &jobs);
    assert!(built.unwrap_err().to_string().contains("priority_class[1].name"), "qm plan refuses it too");
}

fn build(jobs: &str) -> Result<Scenario, String> {
    let cluster = cluster(&format!("[[pool]]\nname = \"dgx\"\nmodel = \"nvidia-h100-80gb-hbm3\"\n{POOL}"));
    let teams =
        teams("[[team]]\nname = \"vision\"\n[[team.quota]]\nflavor = \"gpu/nvidia-h100-80gb-hbm3\"\nnominal = 8\n");
    let jobs: JobsFile = toml::from_str(jobs).unwrap();
    Scenario::build(&cluster, &teams, &jobs).map_err(|e| e.to_string())
}

#[test]
fn jobs_named_twice_submitted_later_than_now_or_with_an_unknown_model_are_refused() {
    let job =
        |name: &str, extra: &str| format!("[[job]]\nname = \"{name}\"\nteam = \"vision\"\ndevices = 1\n{extra}\n");
    assert!(build(&format!("now_s = 10\n{}{}", job("a", ""), job("b", "submit_s = 10"))).is_ok());
    let twice = build(&format!("now_s = 10\n{}{}", job("a", ""), job("a", ""))).unwrap_err();
    assert_eq!(twice, "invalid jobs.job[1].name: \"a\" is also job[0]'s name");
    let later = build(&format!("now_s = 10\n{}", job("a", "submit_s = 11"))).unwrap_err();
    assert_eq!(later, "invalid jobs.job[0].submit_s: 11 is after now_s 10: the job would not be submitted yet");
    let models = "models = [\"nvidia-h100-80gb-hbm3\", \"nvidia-h1OO\"]";
    let typo = build(&format!("now_s = 10\n{}", job("a", models))).unwrap_err();
    assert_eq!(
        typo,
        "invalid jobs.job[0].models[1]: no flavor gpu/nvidia-h1OO in team \"vision\"'s quota or in the cluster"
    );
}

#[test]
fn a_preempted_job_names_a_pending_preemptor() {
    let running = "[[job]]\nname = \"a\"\nteam = \"vision\"\ndevices = 4\n";
    let pending = "[[job]]\nname = \"b\"\nteam = \"vision\"\ndevices = 4\n";
    let missing = build(&format!("now_s = 10\n{running}state = \"preempted\"\n")).unwrap_err();
    assert_eq!(missing, "invalid jobs.job[0].preempted_for: required with state = \"preempted\"");
    let unknown = build(&format!("now_s = 10\n{running}state = \"preempted\"\npreempted_for = \"zz\"\n")).unwrap_err();
    assert_eq!(unknown, "invalid jobs.job[0].preempted_for: no pending job \"zz\"");
    let stray =
        build(&format!("now_s = 10\n{running}state = \"running\"\npreempted_for = \"b\"\n{pending}")).unwrap_err();
    assert_eq!(stray, "invalid jobs.job[0].preempted_for: only with state = \"preempted\"");
    let ok = build(&format!("now_s = 10\n{running}state = \"stopping\"\n{pending}")).unwrap();
    assert_eq!(ok.state.job(qm_core::JobId(1)).unwrap().state, qm_core::JobState::Stopping);
}
