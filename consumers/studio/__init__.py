"""The policy studio: a web app where policy authors write, try, tune, label and promote
policies (``clipguard studio``). Server-rendered pages (FastAPI, Jinja2 templates beside the
code) with one small script (``static/studio.js``); no Node build, nothing from a CDN.

==========================================  ================================================
module                                      what it holds
==========================================  ================================================
:mod:`~consumers.studio.config`             :class:`StudioConfig`, checked once at start
:mod:`~consumers.studio.access`             localhost-only, token, cross-site POST refusal
:mod:`~consumers.studio.app`                :class:`Studio` (shared state), :func:`create_app`
:mod:`~consumers.studio.library`            the policy files, the live linter
:mod:`~consumers.studio.versions`           every write: a new version, history, audit entry
:mod:`~consumers.studio.audit`              the audit log (JSON lines)
:mod:`~consumers.studio.scoring`            model, sandboxed decode pool, examples, uploads
:mod:`~consumers.studio.incidents`          incidents from flag events
:mod:`~consumers.studio.queue`              the review queue (SQLite): file, topic, store
:mod:`~consumers.studio.flagfeed`           the flags topic read into the queue
:mod:`~consumers.studio.frames`             an incident's frames around its peak
:mod:`~consumers.studio.timeline`           an incident's score over time, with thumbnails
:mod:`~consumers.studio.labels`             review verdicts and the spans they cover
:mod:`~consumers.studio.database`           their SQLite file (beside a local store), versions
:mod:`~consumers.studio.tune`               labelled scores, precision and recall
:mod:`~consumers.studio.traffic`            stored traffic's scores: Tune's live count
:mod:`~consumers.studio.hashtune`           hash policies: nearest distances, distance count
:mod:`~consumers.studio.handoff`            the JSON export for review tools
:mod:`~consumers.studio.store_link`         the frame store, when there is one (lazy)
:mod:`~consumers.studio.preparing`          slow store answers, shared; pages wait briefly
:mod:`~consumers.studio.warm`               start-up work; store answers in the background
:mod:`~consumers.studio.kept`               those answers kept on disk for a restart
``pages_policies``, ``pages_try``,          the routers: one per page group
``pages_review``, ``pages_hashtune``,
``pages_incident``, ``pages_store``
==========================================  ================================================

The policy files stay the source of truth: the studio writes new versions of them and an
audit log, never a hidden database of policies. Its own files (uploads, thumbnails, version
history, audit log, compiled policies, the store's prepared answers) live in one data
folder; the review queue and labels too, unless a store on this machine is connected: then
beside its frames, where ``clipguard policy backtest`` reads the labels as ground truth.
"""

from consumers.studio.app import Studio, create_app
from consumers.studio.config import StudioConfig

__all__ = ["Studio", "StudioConfig", "create_app"]
