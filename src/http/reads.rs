//! What readers get of a stored prediction: the body as the platform sent it, but for exactly the
//! contract's "where reads may differ": with the gateway on, `urls.get` and `urls.cancel` name
//! the inbox (`gateway::links`); once output files are archived, `output` names the inbox's
//! copies and `inbox_archive` holds the platform's original (`archive::ArchivedOutput`). Every
//! read route goes through here: one prediction, a wait, the list, the event stream, the history.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use time::OffsetDateTime;

use crate::archive::ArchivedOutput;
use crate::http::gateway::name_the_inbox;
use crate::http::{AppState, base_url};
use crate::store::{ArchiveFile, StoredPrediction};

/// The base a reader reached the inbox at, which the links it gets start with.
#[derive(Clone)]
pub(in crate::http) struct Reader {
    base: String,
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            base: base_url(state, &parts.headers),
        })
    }
}

impl Reader {
    /// Each prediction's body as this reader gets it.
    pub(in crate::http) async fn present(&self, state: &AppState, items: &mut [StoredPrediction]) {
        let files = self
            .archived_files(
                state,
                items
                    .iter()
                    .filter(|item| succeeded(item.status.as_deref()))
                    .map(|item| item.id.as_str()),
            )
            .await;
        for item in items.iter_mut() {
            let body = std::mem::take(&mut item.body);
            item.body = self.one_body(state, &item.id, body, &files);
        }
    }

    /// One prediction's body as this reader gets it.
    ///
    /// Not an `async fn`, which would keep `item` twice: a woken wait answers through here.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    pub(in crate::http) fn present_one<'a>(
        &'a self,
        state: &'a AppState,
        mut item: StoredPrediction,
    ) -> impl Future<Output = StoredPrediction> + 'a {
        async move {
            self.present(state, std::slice::from_mut(&mut item)).await;
            item
        }
    }

    /// The bodies of deliveries of prediction `id`, each with its own status, as this reader
    /// gets them: a `succeeded` one names the archived copies as the latest state does.
    pub(in crate::http) async fn present_deliveries(
        &self,
        state: &AppState,
        id: &str,
        bodies: Vec<(Option<String>, String)>,
    ) -> Vec<String> {
        let any_succeeded = bodies
            .iter()
            .any(|(status, _)| succeeded(status.as_deref()));
        let files = if any_succeeded {
            self.archived_files(state, std::iter::once(id)).await
        } else {
            Vec::new()
        };
        bodies
            .into_iter()
            .map(|(status, body)| {
                if succeeded(status.as_deref()) {
                    self.one_body(state, id, body, &files)
                } else {
                    name_the_inbox(state, &self.base, body)
                }
            })
            .collect()
    }

    /// While every file of a prediction is still queued, its body is as stored: the platform's
    /// URLs work for an hour yet.
    fn one_body(&self, state: &AppState, id: &str, body: String, files: &[ArchiveFile]) -> String {
        let body = match &state.archive {
            Some(archive) => {
                let mine: Vec<ArchiveFile> = files
                    .iter()
                    .filter(|file| file.prediction_id == id)
                    .cloned()
                    .collect();
                let mine = if mine.iter().all(|file| file.state == "queued") {
                    Vec::new()
                } else {
                    mine
                };
                let view = ArchivedOutput {
                    base: &self.base,
                    links: archive.links(),
                    now: OffsetDateTime::now_utc().unix_timestamp(),
                };
                view.present(&body, &mine).unwrap_or(body)
            }
            None => body,
        };
        name_the_inbox(state, &self.base, body)
    }

    /// The file records of these predictions; none when the archive is off, or when they cannot
    /// be read (then readers get the bodies as stored, and the platform's URLs).
    async fn archived_files<'a>(
        &self,
        state: &AppState,
        ids: impl Iterator<Item = &'a str>,
    ) -> Vec<ArchiveFile> {
        if state.archive.is_none() {
            return Vec::new();
        }
        let ids: Vec<&str> = ids.collect();
        if ids.is_empty() {
            return Vec::new();
        }
        match state.store.archive_files(&ids).await {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(%error, "could not read the archive's records; the platform's URLs are served");
                Vec::new()
            }
        }
    }
}

fn succeeded(status: Option<&str>) -> bool {
    status == Some("succeeded")
}
