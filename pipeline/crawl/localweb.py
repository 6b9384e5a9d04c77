"""A real little web site, generated from text that ships with Python, served on loopback.

Why: the quickstart and the tests need a web to crawl that exists on any machine
after install, with no network. The text is real human writing:

* ``/docs/``    prose: docstrings of standard-library modules (read with ``ast``, so no
                module is imported), one module per page;
* ``/code/``    code: standard-library source files (served gzip-compressed when the
                client accepts it);
* ``/lang/``    other languages: translation catalogs (``*/LC_MESSAGES/*.po``) of installed
                packages (apprise: es, pt_BR; humanize: ~35 languages) and, when the
                stdlib test suite is installed, the Chinese/Japanese prose in
                ``test/cjkencodings/*-utf8.txt``;

plus pages that exercise the later stages and the crawler's defences:
``/boiler/`` (nav, cookie banner and footer around a few sentences), ``/mirror/``
(exact copies, and near-copies with ~2% of words changed or a boilerplate paragraph
added), ``/spam/`` (keyword stuffing), ``/private/`` (disallowed by robots.txt),
``/slow/`` (answered after ``slow_delay_s``), ``/files/`` (JSON, a PDF, binary),
links to ``/missing/`` (404) and ``/bad/`` (gzip bomb, over-size bodies, redirect loop,
endless redirect chain, slow-loris trickle, wrong/missing charset, malformed HTML,
invalid links, a link to 10.0.0.1, 500s and a flaky 503).

``build_site`` is a pure function of (config, Python installation): same seed and
page count give byte-identical files and the same ``digest``. ``cached_site`` builds it
once per (config, Python installation, generator code) into the user cache
(``$FORGEFLOW_CACHE_DIR``, default ``~/.cache/forgeflow``) and serves every later crawl
from there.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import gzip
import hashlib
import html
import json
import os
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.crawl.config import LocalSiteConfig
from pipeline.store import user_cache_dir

STDLIB = Path(sysconfig.get_paths()["stdlib"])
_AST_LOCK = threading.Lock()
SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages",
             "ensurepip", "turtledemo", "tkinter", "__pycache__", "venv", "pydoc_data"}
SKIP_MODULES = {"this", "antigravity", "__phello__", "__hello__", "_pydecimal"}

SPAM_KEYWORDS = ["cheap", "best price", "buy now", "free download", "casino bonus",
                 "discount", "limited offer", "click here", "win money", "top rated"]
# Boilerplate is boilerplate: the kind of text C4/FineWeb line filters remove.
COOKIE_BANNER = ("We use cookies to improve your experience on our site. By continuing to "
                 "browse you agree to our use of cookies, our privacy policy and our terms of "
                 "use. Accept all cookies or manage your preferences.")
FOOTER = ("Copyright 2024 Example Docs Network. All rights reserved. Privacy policy | Terms "
          "of use | Cookie settings | Contact us | Sitemap | Subscribe to our newsletter")
NAV = ["Home", "Docs", "Code", "Blog", "Forum", "Downloads", "About", "Careers", "Press",
       "Support", "Status", "Pricing", "Partners", "Events", "Shop", "Login", "Sign up"]


# ---------------------------------------------------------------------------- sources
def _stdlib_files() -> list[Path]:
    """Top-level stdlib modules and the modules of top-level packages, sorted."""
    out = []
    for entry in sorted(STDLIB.iterdir()):
        if entry.suffix == ".py" and entry.stem not in SKIP_MODULES:
            out.append(entry)
        elif entry.is_dir() and entry.name not in SKIP_DIRS and (entry / "__init__.py").exists():
            out.extend(p for p in sorted(entry.glob("*.py")) if p.stem not in SKIP_MODULES)
    return [p for p in out if p.stat().st_size <= 200_000]


def _module_name(p: Path) -> str:
    rel = p.relative_to(STDLIB).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _docstrings(path: Path) -> list[tuple[str, str]]:
    """[(heading, docstring)] for the module and its public classes/functions/methods."""
    try:
        with _AST_LOCK:    # CPython 3.11's ast.parse is not thread-safe (two crawls build at once)
            tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []
    doc = ast.get_docstring(tree)
    if doc:
        out.append(("", doc))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and not node.name.startswith("_"):
            d = ast.get_docstring(node)
            if d:
                out.append((node.name, d))
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                            and not sub.name.startswith("_"):
                        d = ast.get_docstring(sub)
                        if d:
                            out.append((f"{node.name}.{sub.name}", d))
    return out


def _paragraphs(doc: str) -> list[str]:
    """Blank-line separated paragraphs with their line breaks joined."""
    paras = [" ".join(line.strip() for line in block.splitlines()).strip()
             for block in re.split(r"\n\s*\n", doc)]
    return [p for p in paras if p]


def _po_strings(path: Path) -> list[str]:
    """Translated strings (msgstr, multi-line aware) of a gettext .po catalog."""
    out, cur, in_str = [], [], False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("msgstr"):
            in_str, cur = True, [line.split(" ", 1)[1] if " " in line else '""']
        elif in_str and line.startswith('"'):
            cur.append(line)
        else:
            if in_str and cur:
                s = "".join(json.loads(c) if c.startswith('"') else "" for c in cur)
                if s and "Content-Type" not in s and "Project-Id" not in s:
                    out.append(s)
            in_str, cur = False, []
    if in_str and cur:
        out.append("".join(json.loads(c) for c in cur if c.startswith('"')))
    return out


def _other_language_texts() -> dict[str, list[str]]:
    """{language: [strings]} of human-written non-English text found after install."""
    found: dict[str, list[str]] = {}
    site_dirs = sorted({Path(p) for p in sys.path if p.endswith("-packages") and Path(p).is_dir()})
    for site in site_dirs:
        for po in sorted(site.glob("*/*/*/LC_MESSAGES/*.po")):
            lang = po.parent.parent.name
            if lang.startswith("en"):
                continue
            strings = [re.sub(r"\s+", " ", re.sub(r"%\(?\w*\)?[sdif]|\{\w*\}", "", s)).strip()
                       for s in _po_strings(po)]
            strings = [s for s in strings
                       if len(s.split()) >= 2 and sum(c.isalpha() for c in s) >= 8]
            if strings:
                found.setdefault(lang, []).extend(strings)
    cjk = STDLIB / "test" / "cjkencodings"
    seen_digests = set()
    for name, lang in (("big5-utf8.txt", "zh_TW"), ("gb2312-utf8.txt", "zh_CN"),
                       ("euc_jp-utf8.txt", "ja"), ("shift_jis-utf8.txt", "ja")):
        p = cjk / name
        if p.exists():
            text = p.read_text(encoding="utf-8", errors="replace")
            h = hashlib.sha1(text.encode()).hexdigest()
            if h not in seen_digests:
                seen_digests.add(h)
                found.setdefault(lang, []).extend(l.strip() for l in text.splitlines() if l.strip())
    return {k: v for k, v in sorted(found.items()) if sum(len(s) for s in v) >= 200}


# ---------------------------------------------------------------------------- HTML
def _page(title: str, body: str, lang: str = "en", extra_head: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n{extra_head}</head>\n<body>\n{body}\n</body>\n</html>\n")


def _links_html(links: list[tuple[str, str]]) -> str:
    return "<ul>\n" + "".join(f"<li><a href=\"{h}\">{html.escape(t)}</a></li>\n"
                              for h, t in links) + "</ul>"


def _article(title: str, sections: list[tuple[str, list[str]]], related: list[tuple[str, str]],
             extra: str = "") -> str:
    parts = [f"<main>\n<article>\n<h1>{html.escape(title)}</h1>"]
    for heading, paras in sections:
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in paras)
    parts.append(extra + "</article>")
    if related:
        parts.append("<aside>\n<h2>See also</h2>\n" + _links_html(related) + "\n</aside>")
    parts.append("</main>\n<footer><p><a href=\"/\">Home</a></p></footer>")
    return "\n".join(parts)


def _boiler_wrap(inner: str, rng: random.Random) -> str:
    nav = " | ".join(f"<a href=\"/boiler/index.html#{n.lower()}\">{n}</a>" for n in NAV)
    share = " ".join(f"<a href=\"/boiler/index.html#share-{s}\">Share on {s}</a>"
                     for s in ("Facebook", "Twitter", "LinkedIn", "Reddit", "Email"))
    return (f"<div class=\"cookie-banner\"><p>{COOKIE_BANNER}</p>"
            f"<button>Accept all</button><button>Manage preferences</button></div>\n"
            f"<header><nav>{nav}</nav></header>\n<div class=\"sidebar\"><p>Trending now</p>"
            + "".join(f"<p><a href=\"/boiler/index.html#t{i}\">Popular topic {i}</a></p>" for i in range(12))
            + f"</div>\n{inner}\n<div class=\"share\">{share}</div>\n"
            f"<div class=\"newsletter\"><p>Subscribe to our newsletter for weekly updates.</p>"
            f"<form><input type=\"email\"><button>Subscribe</button></form></div>\n"
            f"<footer><p>{FOOTER}</p></footer>")


# ---------------------------------------------------------------------------- builder
def build_site(out_dir: Path, cfg: LocalSiteConfig) -> dict:
    """Write the site under ``out_dir`` (replacing it); return counts per kind, the
    number of pages, the content digest and the main text of each prose page."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    rng = random.Random(f"localweb:{cfg.seed}:{cfg.pages}")
    files: dict[str, bytes] = {}
    kinds: dict[str, str] = {}
    texts: dict[str, str] = {}

    n = cfg.pages
    counts = {k: int(round(n * getattr(cfg, f"{k}_frac"))) for k in
              ("code", "boilerplate", "near_dup", "exact_dup", "spam", "other_lang", "private")}
    counts["slow"] = cfg.slow_pages
    n_docs = max(5, n - sum(counts.values()))

    # -- prose source: stdlib modules with enough documentation
    candidates = _stdlib_files()
    rng.shuffle(candidates)
    need_prose = n_docs + counts["private"] + counts["slow"]
    prose: list[tuple[str, list[tuple[str, list[str]]], str]] = []   # (module, sections, text)
    code_sources: list[tuple[str, str]] = []
    for p in candidates:
        if len(prose) >= need_prose and len(code_sources) >= counts["code"]:
            break
        name = _module_name(p)
        if len(prose) < need_prose:
            docs = _docstrings(p)
            sections = [(h, _paragraphs(d)) for h, d in docs][:25]
            text = "\n".join(par for _, ps in sections for par in ps)
            if len(text.split()) >= 80:
                prose.append((name, sections, text))
                continue
        if len(code_sources) < counts["code"]:
            try:
                src = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if src.count("\n") >= 40:
                code_sources.append((name, "\n".join(src.splitlines()[:300])))
    # a large site may need more pages than there are documented modules: split the
    # longest modules' documentation into parts
    words = [len(t.split()) for _, _, t in prose]
    while len(prose) < need_prose:
        splittable = [i for i, (_, secs, _) in enumerate(prose) if len(secs) >= 2 and words[i] >= 160]
        if not splittable:
            break
        longest = max(splittable, key=lambda i: (words[i], -i))
        mod, sections, _ = prose[longest]
        half = len(sections) // 2
        parts = []
        for k, secs in ((1, sections[:half]), (2, sections[half:])):
            text = "\n".join(par for _, ps in secs for par in ps)
            parts.append((f"{mod}-part{k}", secs, text))
        prose[longest:longest + 1] = parts
        words[longest:longest + 1] = [len(t.split()) for _, _, t in parts]
    prose_docs, rest = prose[:n_docs], prose[n_docs:]
    private_src, slow_src = rest[:counts["private"]], rest[counts["private"]:]

    def add(path: str, content: str | bytes, kind: str, text: str | None = None):
        files[path] = content.encode("utf-8") if isinstance(content, str) else content
        kinds[path] = kind
        if text is not None:
            texts[path] = text

    def related(prefix: str, names: list[str], me: str) -> list[tuple[str, str]]:
        others = [x for x in names if x != me]
        pick = rng.sample(others, min(cfg.links_per_page, len(others)))
        return [(f"/{prefix}/{x}.html", x) for x in pick]

    broken_counter = iter(range(10 ** 6))

    def maybe_broken() -> str:
        if rng.random() < cfg.broken_link_frac:
            return f"<p><a href=\"/missing/{next(broken_counter)}.html\">Old link</a></p>\n"
        return ""

    doc_names = [m for m, _, _ in prose_docs]
    for mod, sections, text in prose_docs:
        add(f"/docs/{mod}.html", _page(f"{mod} — module documentation",
            _article(f"Module {mod}", sections, related("docs", doc_names, mod), maybe_broken())),
            "docs", text)
    code_names = [m for m, _ in code_sources]
    for mod, src in code_sources:
        body = (f"<main><h1>Source of {html.escape(mod)}</h1>\n<pre><code>{html.escape(src)}"
                f"</code></pre></main>\n<aside>{_links_html(related('code', code_names, mod))}</aside>")
        add(f"/code/{mod}.html", _page(f"{mod}.py — source", body), "code", src)
    for kind, src_list, prefix in (("private", private_src, "private"), ("slow", slow_src, "slow")):
        for mod, sections, text in src_list:
            add(f"/{prefix}/{mod}.html", _page(f"{mod} ({kind})", _article(f"Module {mod}", sections, [])),
                kind, text)

    # -- boilerplate-heavy: a few sentences inside nav/cookie/footer
    for i in range(counts["boilerplate"]):
        mod, sections, _ = prose_docs[rng.randrange(len(prose_docs))]
        para = next((p for _, ps in sections for p in ps if len(p.split()) >= 20), sections[0][1][0])
        inner = f"<main><article><h1>News: {html.escape(mod)}</h1><p>{html.escape(para)}</p></article></main>"
        add(f"/boiler/page-{i}.html", _page(f"News {i} | Example Docs Network", _boiler_wrap(inner, rng)),
            "boilerplate", para)

    # -- exact and near copies of docs pages
    for i in range(counts["exact_dup"]):
        mod = doc_names[rng.randrange(len(doc_names))]
        add(f"/mirror/copy-{i}.html", files[f"/docs/{mod}.html"], "exact_dup", texts[f"/docs/{mod}.html"])
    vocab = sorted({w for _, _, t in prose_docs[:20] for w in t.split() if w.isalpha() and len(w) > 3})
    for i in range(counts["near_dup"]):
        mod, sections, text = prose_docs[rng.randrange(len(prose_docs))]
        if i % 2 == 0:      # ~2% of words replaced
            new_sections = []
            for h, ps in sections:
                new_ps = []
                for p in ps:
                    words = p.split()
                    for j in range(len(words)):
                        if rng.random() < 0.02:
                            words[j] = rng.choice(vocab)
                    new_ps.append(" ".join(words))
                new_sections.append((h, new_ps))
            variant = "words"
        else:               # a boilerplate paragraph appended
            new_sections = sections + [("", [COOKIE_BANNER])]
            variant = "para"
        t = "\n".join(par for _, ps in new_sections for par in ps)
        add(f"/mirror/near-{i}-{variant}.html",
            _page(f"{mod} — module documentation", _article(f"Module {mod}", new_sections, [])),
            "near_dup", t)

    # -- keyword-stuffed spam
    for i in range(counts["spam"]):
        kws = rng.sample(SPAM_KEYWORDS, 4)
        lines = [" ".join(rng.choice(kws) for _ in range(40)) for _ in range(8)]
        head = f"<meta name=\"keywords\" content=\"{', '.join(kws * 5)}\">\n"
        body = (f"<main><h1>{' '.join(kws).upper()}!!!</h1>" + "".join(f"<p>{l}</p>" for l in lines)
                + "".join(f"<a href=\"/spam/index.html#{k.replace(' ', '-')}\">{k}</a> " for k in kws * 10)
                + "</main>")
        add(f"/spam/page-{i}.html", _page(" ".join(kws), body, extra_head=head), "spam", "\n".join(lines))

    # -- other languages
    langs = _other_language_texts()
    lang_names = list(langs)
    for i in range(counts["other_lang"] if lang_names else 0):
        lang = lang_names[i % len(lang_names)]
        strings = langs[lang]
        k = i // len(lang_names)
        chunk = strings[(k * 40) % len(strings):][:40] or strings[:40]
        paras = [" ".join(chunk[j:j + 5]) for j in range(0, len(chunk), 5)]
        code = lang.split("_")[0]
        add(f"/lang/{lang}-{i}.html",
            _page(f"{lang} {i}", _article(chunk[0][:60], [("", paras)], []), lang=code),
            f"lang:{code}", "\n".join(paras))

    # -- non-HTML resources
    add("/files/modules.json", json.dumps({"modules": doc_names, "code": code_names}, indent=1),
        "json")
    pdf_text = prose_docs[0][2][:400].replace("(", "[").replace(")", "]").replace("\\", "/")
    stream = f"BT /F1 10 Tf 40 750 Td ({' '.join(pdf_text.split())}) Tj ET".encode("latin-1", "replace")
    pdf = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
           b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
           b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]/Contents 4 0 R>>endobj\n"
           + f"4 0 obj<</Length {len(stream)}>>stream\n".encode() + stream + b"\nendstream endobj\n%%EOF\n")
    add("/files/report.pdf", pdf, "pdf")
    add("/files/blob.bin", bytes(rng.randrange(256) for _ in range(4096)), "binary")

    # -- the /bad/ corner: files here, dynamic paths in the server
    sample = prose_docs[1][2] if len(prose_docs) > 1 else prose_docs[0][2]
    latin_text = "Le café est prêt. " + sample[:600]
    add("/bad/latin1.html", (f"<html><head><title>Wrong charset</title></head><body><p>{html.escape(latin_text)}"
                             f"</p></body></html>").encode("latin-1", "replace"), "bad_charset")
    add("/bad/nocharset.html", f"<html><body><p>{html.escape(sample[:800])}</p></body></html>",
        "no_charset")
    add("/bad/malformed.html", f"<html><body><div><p>{html.escape(sample[:800])}<table><tr><td>"
        f"unclosed <b>bold <i>mixed</b></i><a href=\"/docs/index.html\">docs</a><p></div></span>",
        "malformed")
    bad_links = ["http://[::1", "javascript:alert(1)", "mailto:someone@example.com",
                 "ftp://example.com/file", "http://exa mple.com/", "http://10.0.0.1/secret",
                 "http://169.254.169.254/latest/meta-data/", "http://:80/", "/bad/ok-target.html"]
    add("/bad/links.html", _page("Bad links", "<main>" + "".join(
        f"<p><a href=\"{html.escape(h)}\">link {i}</a></p>" for i, h in enumerate(bad_links)) + "</main>"),
        "bad_links")
    add("/bad/ok-target.html", _page("Reached", _article("Reached", [("", [sample[:500]])], [])), "docs",
        sample[:500])
    add("/hidden/redirect-target.html",
        _page("Redirect target", _article("Redirect target", [("", [sample[:400]])], [])), "docs")
    dynamic = ["/bad/bomb.html", "/bad/huge.html", "/bad/huge-stream.html", "/bad/trickle.html",
               "/bad/loop-a", "/bad/chain/0", "/bad/redirect-ok", "/bad/error500", "/bad/flaky",
               "/bad/latin1.html", "/bad/nocharset.html", "/bad/malformed.html", "/bad/links.html",
               "/files/modules.json", "/files/report.pdf", "/files/blob.bin"]
    add("/bad/index.html", _page("Edge cases", "<main><h1>Edge cases</h1>"
        + _links_html([(d, d) for d in dynamic]) + "</main>"), "index")

    # -- section indexes (paginated, which adds depth) and the home page
    sections_home = []
    for prefix, title in (("docs", "Documentation"), ("code", "Source code"), ("lang", "Other languages"),
                          ("mirror", "Mirrors"), ("boiler", "News"), ("spam", "Deals"),
                          ("private", "Private"), ("slow", "Slow pages")):
        members = sorted(p for p in files if p.startswith(f"/{prefix}/"))
        if not members:
            continue
        size = cfg.index_page_size
        pages = [members[i:i + size] for i in range(0, len(members), size)]
        for k, chunk in enumerate(pages):
            name = "index.html" if k == 0 else f"index-{k + 1}.html"
            nav = f"<p><a href=\"/{prefix}/index-{k + 2}.html\">Next page</a></p>" if k + 1 < len(pages) else ""
            add(f"/{prefix}/{name}", _page(f"{title} ({k + 1}/{len(pages)})",
                f"<main><h1>{title}</h1>{_links_html([(m, m.rsplit('/', 1)[1]) for m in chunk])}{nav}</main>"),
                "index")
        sections_home.append((f"/{prefix}/index.html", title))
    if cfg.adversarial:
        sections_home.append(("/bad/index.html", "Edge cases"))
    add("/index.html", _page("Local web", "<main><h1>Local web</h1>" + _links_html(sections_home)
                             + "<p><a href=\"/missing/start.html\">A dead link</a></p></main>"), "index")

    # -- robots.txt and sitemap ({{BASE}} is filled in by the server)
    add("/robots.txt", "User-agent: *\nDisallow: /private/\n\nSitemap: {{BASE}}/sitemap.xml\n", "robots")
    urls = sorted(p for p in files if p.endswith(".html") and not p.startswith(("/bad/", "/hidden/", "/private/")))
    add("/sitemap.xml", "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n"
        + "".join(f"<url><loc>{{{{BASE}}}}{u}</loc></url>\n" for u in urls) + "</urlset>\n", "sitemap")

    digest = hashlib.sha256()
    for path in sorted(files):
        dest = out_dir / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(files[path])
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    per_kind: dict[str, int] = {}
    for k in kinds.values():
        per_kind[k] = per_kind.get(k, 0) + 1
    (out_dir / "_site.json").write_text(json.dumps({"kinds": kinds}, indent=0, sort_keys=True))
    return {"files": len(files), "html_pages": sum(p.endswith(".html") for p in files),
            "kinds": per_kind, "digest": digest.hexdigest(), "languages": sorted(langs),
            "build_s": round(time.perf_counter() - t0, 3), "paths": kinds, "texts": texts}


# ---------------------------------------------------------------------------- cache
# Building the quickstart's 600-page site parses ~700 stdlib modules (seconds of CPU,
# serialised by _AST_LOCK), and three crawls of one run used to build it three times.
# The site is a pure function of (config, Python installation, this file), so it is built
# once into the user cache and reused by every crawl, run and test after that.
_SERVER_ONLY = ("slow_delay_s", "trickle_s")     # server behaviour, not file content
_SITES: dict[str, tuple[Path, dict]] = {}
_SITES_LOCK = threading.Lock()


def site_key(cfg: LocalSiteConfig) -> str:
    """What the site's files depend on: the config (less server-only fields), the Python
    installation (version, stdlib and site-packages paths) and this generator's source."""
    payload = {"config": cfg.model_dump(mode="json", exclude=set(_SERVER_ONLY)),
               "python": sys.version, "stdlib": str(STDLIB),
               "purelib": sysconfig.get_paths()["purelib"],
               "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_site(cfg: LocalSiteConfig) -> tuple[Path, dict, bool]:
    """``(site_dir, info, built)`` for ``cfg``: from this process's memory, else from the
    on-disk cache (``user_cache_dir()/localweb/<key>/``), else built into it (atomically:
    built in a temporary sibling, renamed into place, under a file lock so concurrent
    processes build it once). ``site_dir`` is shared: treat it as read-only. When the
    cache directory cannot be written the site is built into a temporary directory."""
    key = site_key(cfg)[:20]
    with _SITES_LOCK:
        hit = _SITES.get(key)
        if hit is not None and (hit[0].parent / "info.json").exists():
            return hit[0], hit[1], False
        root = user_cache_dir() / "localweb" / key
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            lock = open(root.parent / f"{key}.lock", "a")
        except OSError:
            tmp = Path(tempfile.mkdtemp(prefix="forgeflow-localweb-"))
            info = build_site(tmp / "site", cfg)
            _SITES[key] = (tmp / "site", info)
            return tmp / "site", info, True
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            built = not (root / "info.json").exists()
            if built:
                tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root.parent))
                info = build_site(tmp / "site", cfg)
                (tmp / "info.json").write_text(json.dumps(info))     # written last: complete
                shutil.rmtree(root, ignore_errors=True)
                os.replace(tmp, root)
            else:
                info = json.loads((root / "info.json").read_text())
        _SITES[key] = (root / "site", info)
        return root / "site", info, built


# ---------------------------------------------------------------------------- server
_BOMB: bytes | None = None
_BOMB_DECODED = 64 * 1024 * 1024


def _gzip_bomb() -> bytes:
    """64 MiB of spaces, gzip-compressed to ~64 KiB (made once per process)."""
    global _BOMB
    if _BOMB is None:
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = b" " * (1 << 20)
        _BOMB = b"".join(c.compress(block) for _ in range(_BOMB_DECODED >> 20)) + c.flush()
    return _BOMB


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):   # clients hanging up are normal here
        pass


CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json",
                 ".pdf": "application/pdf", ".bin": "application/octet-stream",
                 ".txt": "text/plain; charset=utf-8", ".xml": "application/xml"}


class LocalSiteServer:
    """Threaded HTTP/1.1 server for a built site, with the dynamic /bad/ and /slow/ paths.

    ``requests`` records (unix time, path, user agent) of every request, so tests can
    check politeness and robots from the server's side."""

    def __init__(self, site_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 slow_delay_s: float = 1.0, trickle_s: float = 30.0, huge_bytes: int = 8 << 20):
        self.site_dir = Path(site_dir).resolve()
        self.slow_delay_s, self.trickle_s, self.huge_bytes = slow_delay_s, trickle_s, huge_bytes
        self.requests: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._flaky_seen: set[str] = set()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):      # quiet
                pass

            def do_GET(self):
                try:
                    server._handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = _QuietServer((host, port), Handler)
        self.httpd.daemon_threads = True
        h, p = self.httpd.server_address[:2]
        self.url = f"http://{h}:{p}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> "LocalSiteServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- responses ---------------------------------------------------------------------
    def _send(self, h, status: int, body: bytes, ctype: str = "text/html; charset=utf-8",
              headers: dict | None = None):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _redirect(self, h, to: str, status: int = 302):
        self._send(h, status, b"", headers={"Location": to})

    def _handle(self, h) -> None:
        path = h.path.split("?", 1)[0].split("#", 1)[0]
        with self._lock:
            self.requests.append((time.time(), path, h.headers.get("User-Agent", "")))
        if path == "/bad/loop-a":
            return self._redirect(h, "/bad/loop-b")
        if path == "/bad/loop-b":
            return self._redirect(h, "/bad/loop-a")
        if path.startswith("/bad/chain/"):
            k = int(path.rsplit("/", 1)[1]) if path.rsplit("/", 1)[1].isdigit() else 0
            return self._redirect(h, f"/bad/chain/{k + 1}")
        if path == "/bad/redirect-ok":
            return self._redirect(h, "/hidden/redirect-target.html", 301)
        if path == "/bad/error500":
            return self._send(h, 500, b"<html><body>Internal error</body></html>")
        if path == "/bad/flaky":
            with self._lock:
                first = path not in self._flaky_seen
                self._flaky_seen.add(path)
            if first:
                return self._send(h, 503, b"<html><body>try again</body></html>", headers={"Retry-After": "0"})
            return self._send(h, 200, b"<html><body><p>Flaky page served on the second try.</p></body></html>")
        if path == "/bad/bomb.html":
            return self._send(h, 200, _gzip_bomb(), headers={"Content-Encoding": "gzip"})
        if path == "/bad/huge.html":
            return self._send(h, 200, b"<html><body>" + b"x" * self.huge_bytes + b"</body></html>")
        if path == "/bad/huge-stream.html":       # no Content-Length: only streaming catches it
            h.send_response(200)
            h.send_header("Content-Type", "text/html; charset=utf-8")
            h.send_header("Connection", "close")
            h.end_headers()
            block = b"<p>" + b"y" * 65536 + b"</p>"
            for _ in range(self.huge_bytes // len(block) + 1):
                h.wfile.write(block)
            h.close_connection = True
            return
        if path == "/bad/trickle.html":            # slow-loris: one byte every 0.2 s
            h.send_response(200)
            h.send_header("Content-Type", "text/html; charset=utf-8")
            h.send_header("Connection", "close")
            h.end_headers()
            end = time.monotonic() + self.trickle_s
            h.wfile.write(b"<html><body><p>")
            while time.monotonic() < end and not self._stop.is_set():
                h.wfile.write(b"z")
                h.wfile.flush()
                time.sleep(0.2)
            h.close_connection = True
            return
        if path.startswith("/slow/"):
            self._stop.wait(self.slow_delay_s)
        rel = path.lstrip("/")
        if rel == "" or rel.endswith("/"):
            rel += "index.html"
        target = (self.site_dir / rel).resolve()
        if self.site_dir not in target.parents or not target.is_file():
            return self._send(h, 404, b"<html><body><h1>404 Not Found</h1></body></html>")
        body = target.read_bytes()
        ctype = CONTENT_TYPES.get(target.suffix, "application/octet-stream")
        if path == "/bad/nocharset.html":
            ctype = "text/html"
        if target.suffix in (".txt", ".xml"):
            body = body.replace(b"{{BASE}}", self.url.encode())
        if path.startswith("/code/") and "gzip" in h.headers.get("Accept-Encoding", ""):
            # like most real servers: compress when asked (exercises Content-Encoding)
            return self._send(h, 200, gzip.compress(body, 6, mtime=0), ctype,
                              headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        self._send(h, 200, body, ctype)


@contextlib.contextmanager
def serve_site(site_dir: Path, host: str = "127.0.0.1", port: int = 0, slow_delay_s: float = 1.0,
               trickle_s: float = 30.0):
    """Serve ``site_dir`` in a background thread; yields the base URL (no trailing /)."""
    with LocalSiteServer(site_dir, host, port, slow_delay_s, trickle_s) as srv:
        yield srv.url
