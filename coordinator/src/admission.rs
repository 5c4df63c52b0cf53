//! Whether a previewed run may start: every step previewed without error,
//! the preview the operator approved unchanged, data loss confirmed, and
//! the operator's role enough for data loss on protected environments. A
//! pure function of the preview and the request, so that each rule is
//! tested on its own; the caller gathers the facts (which hosts are in
//! protected environments) and maps a [`Refusal`] to the wire.

use crate::config::Role;
use rewind_proto::v1::{PreviewReply, Risk};
use std::collections::HashMap;
use std::time::Duration;

/// Why a run was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// A step's preview failed: nothing would be sure to work.
    PreviewFailed,
    /// The targets changed since the preview the operator approved.
    Changed,
    /// The run loses data and the operator did not confirm it.
    DataLossUnconfirmed,
    /// Data loss on a protected environment needs the admin role.
    Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    /// The refusal on the wire: a role is a permission, the rest are
    /// preconditions the operator can meet.
    pub fn status(self) -> tonic::Status {
        match self.kind {
            RefusalKind::Role => tonic::Status::permission_denied(self.message),
            _ => tonic::Status::failed_precondition(self.message),
        }
    }
}

/// What the operator asked for, beside the plan.
pub struct Request<'a> {
    pub operator: &'a str,
    pub role: Role,
    pub confirm_data_loss: bool,
    pub force: bool,
    /// The fingerprints of the preview the operator approved, by
    /// [`approval_key`](crate::launch::approval_key); empty: none.
    pub approved: &'a HashMap<String, String>,
}

/// What an admitted run carries on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The widest data-loss window of its steps (seconds).
    pub window: Option<u64>,
    /// Per step, in plan order: the window of a step that loses data.
    pub windows: Vec<Option<u64>>,
}

/// Admit a run or say why not. `protected` names the protected environment
/// a host's data-loss step would touch, if any.
pub fn admit(
    preview: &PreviewReply,
    request: &Request,
    protected: &dyn Fn(&str) -> Option<String>,
) -> Result<Admitted, Refusal> {
    let mut problems = Vec::new();
    let mut changed = Vec::new();
    let mut data_loss = Vec::new();
    let mut on_protected = Vec::new();
    let mut window: Option<u64> = None;
    let mut windows = Vec::new();
    for stage in &preview.stages {
        for step in &stage.steps {
            let place = format!(
                "stage {} host {} target {}",
                stage.stage, step.agent, step.target
            );
            if let Some(e) = &step.error {
                problems.push(format!("{place}: {}: {}", e.kind, e.message));
            }
            let key = crate::launch::approval_key(&stage.stage, &step.agent, &step.target);
            if request.approved.get(&key) != Some(&step.fingerprint) {
                changed.push(place.clone());
            }
            let loses_data = step
                .preview
                .as_ref()
                .filter(|p| p.risk == Risk::DataLoss as i32);
            windows.push(loses_data.map(|p| p.data_loss_window_seconds.unwrap_or(0)));
            if let Some(p) = loses_data {
                window = window.max(p.data_loss_window_seconds);
                data_loss.push(place);
                if let Some(env) = protected(&step.agent) {
                    on_protected.push(format!(
                        "host {} target {} (environment {env})",
                        step.agent, step.target
                    ));
                }
            }
        }
    }
    let refuse = |kind, message| Err(Refusal { kind, message });
    if !problems.is_empty() {
        return refuse(
            RefusalKind::PreviewFailed,
            format!(
                "the preview failed, nothing was started:\n  {}",
                problems.join("\n  ")
            ),
        );
    }
    if !request.approved.is_empty() && !request.force && !changed.is_empty() {
        return refuse(
            RefusalKind::Changed,
            format!(
                "the targets changed since the preview you approved, nothing was started: {}; preview again (or run with --force)",
                changed.join("; ")
            ),
        );
    }
    if !data_loss.is_empty() && !request.confirm_data_loss {
        return refuse(
            RefusalKind::DataLossUnconfirmed,
            format!(
                "this rollback loses data{} ({}); run it again with --confirm-data-loss",
                window
                    .map(|w| format!(
                        " written in the last {}",
                        humantime::format_duration(Duration::from_secs(w))
                    ))
                    .unwrap_or_default(),
                data_loss.join("; ")
            ),
        );
    }
    if !on_protected.is_empty() && request.role < Role::Admin {
        return refuse(
            RefusalKind::Role,
            format!(
                "operator {} has role {}; data-loss steps on protected environments need the admin role: {}",
                request.operator,
                request.role,
                on_protected.join("; ")
            ),
        );
    }
    Ok(Admitted { window, windows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_proto::v1::{Preview, StagePreview, StepError, StepPreview};

    fn step(agent: &str, risk: Risk, window: Option<u64>) -> StepPreview {
        StepPreview {
            agent: agent.into(),
            target: "app".into(),
            preview: Some(Preview {
                risk: risk as i32,
                data_loss_window_seconds: window,
                ..Default::default()
            }),
            fingerprint: format!("fp-{agent}"),
            ..Default::default()
        }
    }

    fn preview(steps: Vec<StepPreview>) -> PreviewReply {
        PreviewReply {
            stages: vec![StagePreview {
                stage: "data".into(),
                steps,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn request<'a>(approved: &'a HashMap<String, String>) -> Request<'a> {
        Request {
            operator: "alice",
            role: Role::Operator,
            confirm_data_loss: false,
            force: false,
            approved,
        }
    }

    fn nowhere(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_clean_preview_is_admitted_with_its_windows() {
        let none = HashMap::new();
        let mut confirmed = request(&none);
        confirmed.confirm_data_loss = true;
        let admitted = admit(
            &preview(vec![
                step("db-1", Risk::DataLoss, Some(600)),
                step("api-1", Risk::Restart, None),
            ]),
            &confirmed,
            &nowhere,
        )
        .unwrap();
        assert_eq!(admitted.window, Some(600));
        assert_eq!(admitted.windows, [Some(600), None]);
    }

    #[test]
    fn a_failed_step_preview_refuses_the_run_naming_it() {
        let none = HashMap::new();
        let mut failing = step("db-1", Risk::None, None);
        failing.error = Some(StepError {
            kind: "unavailable".into(),
            message: "not connected".into(),
        });
        let refusal = admit(&preview(vec![failing]), &request(&none), &nowhere).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::PreviewFailed);
        assert!(
            refusal
                .message
                .contains("stage data host db-1 target app: unavailable: not connected"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn an_approved_preview_must_be_unchanged_unless_forced() {
        let approved: HashMap<String, String> =
            [("data/db-1/app".to_string(), "fp-old".to_string())].into();
        let plan = preview(vec![step("db-1", Risk::None, None)]);
        let refusal = admit(&plan, &request(&approved), &nowhere).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::Changed);
        assert!(refusal.message.contains("stage data host db-1 target app"));
        let mut forced = request(&approved);
        forced.force = true;
        assert!(admit(&plan, &forced, &nowhere).is_ok());
        let same: HashMap<String, String> =
            [("data/db-1/app".to_string(), "fp-db-1".to_string())].into();
        assert!(admit(&plan, &request(&same), &nowhere).is_ok());
    }

    #[test]
    fn data_loss_needs_confirmation_and_on_protected_hosts_the_admin_role() {
        let none = HashMap::new();
        let plan = preview(vec![step("db-1", Risk::DataLoss, Some(3600))]);
        let refusal = admit(&plan, &request(&none), &nowhere).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::DataLossUnconfirmed);
        assert!(
            refusal.message.contains("written in the last 1h"),
            "{}",
            refusal.message
        );

        let mut confirmed = request(&none);
        confirmed.confirm_data_loss = true;
        let production = |agent: &str| (agent == "db-1").then(|| "production".to_string());
        let refusal = admit(&plan, &confirmed, &production).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::Role);
        assert_eq!(
            refusal.clone().status().code(),
            tonic::Code::PermissionDenied
        );
        assert!(
            refusal
                .message
                .contains("host db-1 target app (environment production)"),
            "{}",
            refusal.message
        );
        confirmed.role = Role::Admin;
        assert!(admit(&plan, &confirmed, &production).is_ok());
    }
}
