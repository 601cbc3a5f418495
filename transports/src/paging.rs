//! Turns page-at-a-time listing requests into the `ListStream` the trait promises, and checks
//! the promise on the way out.
//!
//! Invariant: every key the stream yields starts with the prefix, is greater than `start_after`
//! and greater than the key before it. A provider that breaks this (an unsorted local listing,
//! a buggy S3-compatible store) produces a `Fatal` error naming the keys instead of a silently
//! wrong frontier (OBJECT-STORES.md, "listings are not snapshots").

use std::future::Future;

use futures::StreamExt;
use futures::stream;

use crate::bucket::{ListStream, ObjectInfo};
use crate::error::{Error, Op, Result};

/// Pages through a listing. `fetch(cursor)` returns one page and the cursor of the next, or
/// `None` when the listing is complete.
pub fn paginate<'a, C, F, Fut>(
    prefix: String,
    start: C,
    start_after: Option<String>,
    fetch: F,
) -> ListStream<'a>
where
    C: Send + 'a,
    F: FnMut(C) -> Fut + Send + 'a,
    Fut: Future<Output = Result<(Vec<ObjectInfo>, Option<C>)>> + Send + 'a,
{
    struct State<C, F> {
        cursor: Option<C>,
        fetch: F,
        last: Option<String>,
        prefix: String,
    }
    let state = State {
        cursor: Some(start),
        fetch,
        last: start_after,
        prefix,
    };
    let pages = stream::try_unfold(state, move |mut state| async move {
        let Some(cursor) = state.cursor.take() else {
            return Ok(None);
        };
        let (page, next) = (state.fetch)(cursor).await?;
        for info in &page {
            check_order(&state.prefix, state.last.as_deref(), &info.key)?;
            state.last = Some(info.key.clone());
        }
        state.cursor = next;
        Ok(Some((page, state)))
    });
    pages
        .map(|page: Result<Vec<ObjectInfo>>| match page {
            Ok(infos) => stream::iter(infos.into_iter().map(Ok)).left_stream(),
            Err(e) => stream::iter(std::iter::once(Err(e))).right_stream(),
        })
        .flatten()
        .boxed()
}

/// Checks the order promise on an already-streaming listing (a store that paginates itself).
pub fn checked(
    prefix: String,
    start_after: Option<String>,
    listing: ListStream<'_>,
) -> ListStream<'_> {
    let mut last = start_after;
    listing
        .map(move |item| {
            let info = item?;
            check_order(&prefix, last.as_deref(), &info.key)?;
            last = Some(info.key.clone());
            Ok(info)
        })
        .boxed()
}

fn check_order(prefix: &str, last: Option<&str>, key: &str) -> Result<()> {
    if !key.starts_with(prefix) {
        return Err(Error::fatal(
            Op::List,
            prefix,
            format!("store listed key {key:?} outside the prefix"),
        ));
    }
    if let Some(last) = last
        && key <= last
    {
        return Err(Error::fatal(
            Op::List,
            prefix,
            format!("store listed {key:?} after {last:?}: listing is not in byte order"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn info(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.to_owned(),
            size_bytes: 0,
            version: None,
        }
    }

    // Proves pages are concatenated and an out-of-order provider is caught, not trusted.
    #[tokio::test]
    async fn pages_concatenate_and_order_is_checked() {
        let pages = [vec![info("p/a"), info("p/b")], vec![info("p/c")]];
        let listed: Vec<_> = paginate("p/".into(), 0usize, None, |i| {
            let page = pages[i].clone();
            async move { Ok((page, (i + 1 < 2).then_some(i + 1))) }
        })
        .try_collect()
        .await
        .expect("well-ordered pages");
        assert_eq!(listed.len(), 3);

        let bad = vec![info("p/b"), info("p/a")];
        let err = paginate("p/".into(), (), None, |()| {
            let page = bad.clone();
            async move { Ok((page, None)) }
        })
        .try_collect::<Vec<_>>()
        .await
        .expect_err("unsorted listing must fail");
        assert!(err.to_string().contains("not in byte order"), "{err}");
    }
}
