#!/usr/bin/env bash
# Download the raw data the pipeline needs (GloVe 6B, VQA v2, VQA-CP v2, bottom-up features) into the
# "Raw layout" of docs/DESIGN.md. Resumable, skips what is complete; run with --help for the details.
set -euo pipefail

readonly PROG="${0##*/}"
readonly GROUPS_ALL="glove,vqa2,vqacp,features"

usage() {
    cat <<EOF
usage: $PROG [--data DIR] [--only NAME[,NAME...]] [--dry-run] [--min-free-gb N] [--help]

Download the raw data into DIR (default: data/) with the layout of docs/DESIGN.md ("Raw layout"):
  glove     glove.6B.zip (822 MB)            -> DIR/glove/glove.6B.{50,100,200,300}d.txt
  vqa2      five VQA v2 zips (~140 MB)       -> DIR/v2_OpenEnded_mscoco_*_questions.json,
                                                DIR/v2_mscoco_{train,val}2014_annotations.json
  vqacp     four VQA-CP v2 json files        -> DIR/vqacp_v2_{train,test}_{questions,annotations}.json
  features  trainval_36.zip (~25 GB)         -> DIR/trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv

Downloads go to NAME.part; an interrupted download resumes where it stopped when run again. A download
counts as fetched only when its size matches the server's Content-Length and it passes its check: a json
must parse (python3), a zip must pass unzip -tq. One that fails (say an HTML error page served with 200)
is moved aside to NAME.bad (replacing an older NAME.bad; never removed by the script) and downloaded
afresh on the next run. A file whose final outputs are present is skipped, except a json in place that
does not parse: it is moved to NAME.bad and fetched again. A zip is extracted into a temporary folder,
its files moved into place, and only then removed. --data must be writable: that is checked before any
download, and a local write failure (folder not writable, disk full) is reported on one line naming the
cause, never retried. A file that fails to download is reported on one line; the others still download,
and the script exits 1 at the end with the list of failures (2 for a usage error). The full set needs
about 100 GB free.

options:
  --data DIR        destination folder (default: data)
  --only NAMES      comma-separated subset of: $GROUPS_ALL (default: all)
  --dry-run         print one line per file (URL -> destination) and exit; no network, nothing written
  --min-free-gb N   free space (GB) to require instead of the estimate for the selected files
  -h, --help        show this help

environment (defaults in brackets):
  VQA_CP_GLOVE_URL        GloVe zip URL [https://nlp.stanford.edu/data/glove.6B.zip]
  VQA_CP_VQA2_BASE        base URL of the VQA v2 zips [https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa]
  VQA_CP_VQACP_BASE       base URL of the VQA-CP v2 json files [https://computing.ece.vt.edu/~aish/vqacp]
  VQA_CP_FEATURES_URL     bottom-up features zip URL
                          [https://storage.googleapis.com/up-down-attention/trainval_36.zip]
  VQA_CP_RETRIES          extra attempts per file after a failure [2]
  VQA_CP_RETRY_DELAY      seconds between attempts [5]
  VQA_CP_CONNECT_TIMEOUT  seconds to wait for a connection [30]
  VQA_CP_STALL_SECONDS    abort an attempt that stays under 1 KB/s for this many seconds [120]
EOF
}

die_usage() {
    echo "error: $1 (see $PROG --help)" >&2
    exit 2
}

# --- arguments -------------------------------------------------------------------------------------
data_dir="data"
only="$GROUPS_ALL"
dry_run=0
min_free_gb=""
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1; shift ;;
        --data | --only | --min-free-gb)
            (($# >= 2)) || die_usage "$1 needs a value"
            case "$1" in
                --data) data_dir="$2" ;;
                --only) only="$2" ;;
                --min-free-gb) min_free_gb="$2" ;;
            esac
            shift 2 ;;
        --data=*) data_dir="${1#*=}"; shift ;;
        --only=*) only="${1#*=}"; shift ;;
        --min-free-gb=*) min_free_gb="${1#*=}"; shift ;;
        *) die_usage "unknown argument '$1'" ;;
    esac
done
[[ -n "$data_dir" ]] || die_usage "--data needs a non-empty folder"
while [[ "$data_dir" == */ && "$data_dir" != / ]]; do data_dir="${data_dir%/}"; done
if [[ -n "$min_free_gb" && ! "$min_free_gb" =~ ^[0-9]+$ ]]; then
    die_usage "--min-free-gb takes a whole number of GB, got '$min_free_gb'"
fi

selected=",$only,"
IFS=',' read -r -a only_names <<<"$only"
((${#only_names[@]})) || die_usage "--only needs at least one name out of $GROUPS_ALL"
for name in "${only_names[@]}"; do
    case "$name" in
        glove | vqa2 | vqacp | features) ;;
        *) die_usage "unknown --only name '$name' (choose from $GROUPS_ALL)" ;;
    esac
done

env_int() {  # env_int VAR DEFAULT: print $VAR (a non-negative integer) or DEFAULT
    local value="${!1:-$2}"
    [[ "$value" =~ ^[0-9]+$ ]] || die_usage "environment variable $1 must be a non-negative integer, got '$value'"
    echo "$value"
}
retries="$(env_int VQA_CP_RETRIES 2)"
retry_delay="$(env_int VQA_CP_RETRY_DELAY 5)"
connect_timeout="$(env_int VQA_CP_CONNECT_TIMEOUT 30)"
stall_seconds="$(env_int VQA_CP_STALL_SECONDS 120)"

glove_url="${VQA_CP_GLOVE_URL:-https://nlp.stanford.edu/data/glove.6B.zip}"
vqa2_base="${VQA_CP_VQA2_BASE:-https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa}"
vqacp_base="${VQA_CP_VQACP_BASE:-https://computing.ece.vt.edu/~aish/vqacp}"
features_url="${VQA_CP_FEATURES_URL:-https://storage.googleapis.com/up-down-attention/trainval_36.zip}"
vqa2_base="${vqa2_base%/}"
vqacp_base="${vqacp_base%/}"

# --- the files ---------------------------------------------------------------------------------------
# One row per download: group|file name in DATA|URL|folder (under DATA) to unzip into, "-" for a plain
# file|final outputs (comma-separated, relative to DATA)|disk space needed in MB (download + extracted).
items=()
add_item() { items+=("$1|$2|$3|$4|$5|$6"); }
add_item glove glove.6B.zip "$glove_url" glove glove/glove.6B.300d.txt 4000
add_item vqa2 v2_Questions_Train_mscoco.zip "$vqa2_base/v2_Questions_Train_mscoco.zip" . \
    v2_OpenEnded_mscoco_train2014_questions.json 300
add_item vqa2 v2_Questions_Val_mscoco.zip "$vqa2_base/v2_Questions_Val_mscoco.zip" . \
    v2_OpenEnded_mscoco_val2014_questions.json 300
add_item vqa2 v2_Questions_Test_mscoco.zip "$vqa2_base/v2_Questions_Test_mscoco.zip" . \
    v2_OpenEnded_mscoco_test2015_questions.json,v2_OpenEnded_mscoco_test-dev2015_questions.json 400
add_item vqa2 v2_Annotations_Train_mscoco.zip "$vqa2_base/v2_Annotations_Train_mscoco.zip" . \
    v2_mscoco_train2014_annotations.json 1200
add_item vqa2 v2_Annotations_Val_mscoco.zip "$vqa2_base/v2_Annotations_Val_mscoco.zip" . \
    v2_mscoco_val2014_annotations.json 800
for split in train test; do
    for kind in questions annotations; do
        json="vqacp_v2_${split}_${kind}.json"
        add_item vqacp "$json" "$vqacp_base/$json" - "$json" 500
    done
done
add_item features trainval_36.zip "$features_url" . \
    trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv 91000

# Fields of the current row, set by load_item.
group="" file="" url="" unzip_to="" outputs="" need_mb=0
load_item() { IFS='|' read -r group file url unzip_to outputs need_mb <<<"$1"; }

is_complete() {  # all final outputs of the current item are present (and a plain json parses)
    local out
    local -a outs
    IFS=',' read -r -a outs <<<"$outputs"
    for out in "${outs[@]}"; do
        [[ -f "$data_dir/$out" ]] || return 1
    done
    [[ "$unzip_to" != "-" ]] || json_in_place_ok
}

declare -A json_checked=()  # file name -> "ok" or the parse error, so each json is parsed once a run
json_reason=""
json_ok() {  # json_ok PATH: does PATH parse as JSON? sets json_reason (one line) when it does not
    json_reason="$(python3 -c '
import json, sys
try:
    with open(sys.argv[1], "rb") as f:
        json.load(f)
except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
    print(str(exc).splitlines()[0])
    sys.exit(1)
' "$1" 2>&1)" && return 0
    [[ -n "$json_reason" ]] || json_reason="python3 could not read it"
    json_reason="${json_reason##*$'\n'}"
    return 1
}
json_in_place_ok() {  # the current item's json in DATA parses (cached)
    if [[ -z "${json_checked[$file]:-}" ]]; then
        if json_ok "$data_dir/$file"; then json_checked[$file]=ok; else json_checked[$file]="$json_reason"; fi
    fi
    [[ "${json_checked[$file]}" == ok ]]
}

if ((dry_run)); then
    for row in "${items[@]}"; do
        load_item "$row"
        [[ "$selected" == *",$group,"* ]] || continue
        if [[ "$unzip_to" == "-" ]]; then
            echo "$url -> $data_dir/$file"
        else
            dest="$data_dir"
            [[ "$unzip_to" == . ]] || dest+="/$unzip_to"
            echo "$url -> $data_dir/$file (unzip into $dest/, then remove the zip)"
        fi
    done
    exit 0
fi

# --- checks before any download ----------------------------------------------------------------------
command -v curl >/dev/null || { echo "error: curl is not installed; install it (e.g. apt-get install curl)" >&2; exit 1; }

command -v python3 >/dev/null || {
    echo "error: python3 is not installed; it checks that each downloaded json parses" >&2
    exit 1
}

todo=()
need_total_mb=0
needs_unzip=0
needs_writing=0  # something to download, extract, move aside or remove
for row in "${items[@]}"; do
    load_item "$row"
    [[ "$selected" == *",$group,"* ]] || continue
    todo+=("$row")
    if ! is_complete; then
        need_total_mb=$((need_total_mb + need_mb))
        needs_writing=1
        [[ "$unzip_to" == "-" ]] || needs_unzip=1
    elif [[ "$unzip_to" != "-" && -f "$data_dir/$file" ]]; then
        needs_writing=1  # a leftover zip to remove
    fi
done
if ((needs_unzip)) && ! command -v unzip >/dev/null; then
    echo "error: unzip is not installed; install it (e.g. apt-get install unzip)" >&2
    exit 1
fi

existing="$data_dir"
until [[ -d "$existing" ]]; do existing="$(dirname "$existing")"; done
free_mb=$(($(df -Pk "$existing" | awk 'NR == 2 {print $4}') / 1024))
if [[ -n "$min_free_gb" ]]; then
    need_total_mb=$((min_free_gb * 1024))
fi
if ((free_mb < need_total_mb)); then
    echo "error: not enough free disk space for $data_dir: need about $(((need_total_mb + 1023) / 1024)) GB," \
        "$((free_mb / 1024)) GB available (free some space, choose another --data, fetch a subset with" \
        "--only, or override the estimate with --min-free-gb)" >&2
    exit 1
fi

os_cause() {  # os_cause MESSAGE: the cause at the end of a tool's error ("...: Permission denied")
    local message="${1##*$'\n'}"
    echo "${message##*: }"
}

check_writable() {  # refuse, on one line and before any download, a --data folder we cannot write in
    local parent="$data_dir" err probe="$data_dir/.download-write-test.$$"
    if [[ -e "$data_dir" && ! -d "$data_dir" ]]; then
        echo "error: --data $data_dir is a file, not a folder (choose another --data)" >&2
        exit 1
    fi
    if ! err="$(mkdir -p "$data_dir" 2>&1)"; then
        until [[ -e "$parent" ]]; do parent="$(dirname "$parent")"; done
        if [[ ! -d "$parent" ]]; then
            echo "error: cannot create --data $data_dir: $parent is a file, not a folder (choose another --data)" >&2
        else
            echo "error: cannot create --data $data_dir: $(os_cause "$err") (choose another --data, or make" \
                "$parent writable)" >&2
        fi
        exit 1
    fi
    if ! err="$(touch "$probe" 2>&1)"; then
        echo "error: --data $data_dir is not writable: $(os_cause "$err") (fix its permissions or mount," \
            "or choose another --data)" >&2
        exit 1
    fi
    rm -f "$probe"
}
((needs_writing)) && check_writable

# --- downloading -------------------------------------------------------------------------------------
file_size() { stat -c %s "$1" 2>/dev/null || wc -c <"$1"; }

remote_size() {  # remote_size URL: print the Content-Length of the final response ("" if none)
    local headers
    headers="$(curl --silent --show-error --fail --location --head --connect-timeout "$connect_timeout" \
        --max-time $((connect_timeout + 60)) "$1")" || return $?
    printf '%s\n' "$headers" | tr -d '\r' | awk '
        tolower($0) ~ /^http\// { length_ = "" }
        tolower($1) == "content-length:" { length_ = $2 }
        END { print length_ }'
}

advice() {  # what to try when the current item cannot be downloaded
    if [[ "$group" == vqacp ]]; then
        echo "the VQA-CP host is often down: try again later, or fetch $file from a mirror into $data_dir/"
    else
        echo "check the URL and your connection, then run again: partial downloads resume"
    fi
}

free_mb_of() {  # free space (MB) of the file system holding folder $1
    df -Pk "$1" 2>/dev/null | awk 'NR == 2 {print int($4 / 1024)}'
}

local_cause() {  # local_cause PART: why writing PART failed (after curl's exit code 23)
    local part="$1" err free probe="$data_dir/.download-write-test.$$"
    if [[ -d "$part" ]]; then
        echo "$part is a folder"
        return
    fi
    if ! err="$(touch "$probe" 2>&1)"; then
        echo "$data_dir is not writable: $(os_cause "$err")"
        return
    fi
    rm -f "$probe"
    free="$(free_mb_of "$data_dir")"
    if [[ -n "$free" ]] && ((free < 16)); then
        echo "the disk is full ($free MB free on $data_dir)"
        return
    fi
    echo "the write failed (disk full, a quota, or $part not a writable file)"
}

# check_download PATH: does the finished download pass its check (json parses, zip tests)? sets check_reason
check_reason=""
check_download() {
    if [[ "$unzip_to" == "-" ]]; then
        json_ok "$1" && return 0
        check_reason="the server sent something that is not valid JSON (an error page?): $json_reason"
    else
        unzip -tq "$1" >/dev/null 2>&1 && return 0
        check_reason="corrupt zip (unzip -tq fails)"
    fi
    return 1
}

fail_reason=""
retriable=1
local_fail=0   # the failure is on this machine (cannot write): reported as such, never retried
bad_content=0  # the server sent a complete file that fails its check (json parse, unzip -tq)
zip_tested=0   # the current zip passed unzip -tq right after its download
# download_once: one attempt at DATA/FILE.part -> DATA/FILE; sets fail_reason and retriable on failure.
download_once() {
    local part="$data_dir/$file.part" target="$data_dir/$file" expected have code status=0 err
    retriable=1
    local_fail=0
    bad_content=0
    err="$(remote_size "$url" 2>&1)" || status=$?
    if ((status)); then
        fail_reason="${err##*$'\n'}"
        [[ "$err" =~ error:\ 4[0-9][0-9] && ! "$err" =~ error:\ 40[89] && ! "$err" =~ error:\ 429 ]] && retriable=0
        return 1
    fi
    expected="$err"
    have=0
    [[ -f "$part" ]] && have="$(file_size "$part")"
    if [[ -n "$expected" ]] && ((have > expected)); then
        echo "note: $part is larger than the server's file ($have > $expected bytes); starting it again" >&2
        rm -f "$part"
        have=0
    fi
    if [[ -z "$expected" ]] || ((have < expected)); then
        ((have)) && echo "resuming $file at $have bytes"
        code="$(curl --fail --location --progress-bar --continue-at - --output "$part" \
            --connect-timeout "$connect_timeout" --speed-limit 1024 --speed-time "$stall_seconds" \
            --write-out '%{http_code}' "$url")" || status=$?
        if ((status)); then
            case "$status" in
                6) fail_reason="cannot resolve the host" ;;
                7) fail_reason="connection refused or host unreachable" ;;
                18) fail_reason="transfer cut short; $part kept for resuming" ;;
                22) fail_reason="HTTP $code"; [[ "$code" == 4* && "$code" != 408 && "$code" != 429 ]] && retriable=0 ;;
                23) fail_reason="cannot write $part: $(local_cause "$part")"; local_fail=1; retriable=0 ;;
                28) fail_reason="timed out (no connection within ${connect_timeout}s or stalled for ${stall_seconds}s)" ;;
                33) fail_reason="the server cannot resume; remove $part to download it from the start"
                    retriable=0 ;;
                *) fail_reason="curl exit code $status" ;;
            esac
            return 1
        fi
    fi
    have="$(file_size "$part")"
    if [[ -n "$expected" ]] && ((have != expected)); then
        fail_reason="incomplete: $have of $expected bytes; $part kept for resuming"
        return 1
    fi
    if ! check_download "$part"; then
        retriable=0  # the next run fetches it afresh
        bad_content=1
        if ! err="$(mv -f "$part" "$target.bad" 2>&1)"; then
            fail_reason="$check_reason; cannot move it aside: $(os_cause "$err")"
            return 1
        fi
        fail_reason="$check_reason; moved to $target.bad, the next run downloads it afresh"
        return 1
    fi
    [[ "$unzip_to" == "-" ]] && json_checked[$file]=ok || zip_tested=1
    if ! err="$(mv -f "$part" "$target" 2>&1)"; then
        fail_reason="cannot rename $part to $target: $(os_cause "$err")"
        local_fail=1
        retriable=0
        return 1
    fi
    [[ ! -f "$target.bad" ]] || echo "note: $target is good now; $target.bad (a bad earlier copy) can be removed"
}

download() {  # download the current item with retries; prints the one-line error on final failure
    local attempt=1 attempts=$((retries + 1))
    echo "downloading $url -> $data_dir/$file"
    until download_once; do
        if ((local_fail)); then
            echo "error: $file: $fail_reason (a local problem, not the server's: not retried)" >&2
            return 1
        fi
        if ((bad_content)); then
            local hint=""
            [[ "$group" != vqacp ]] || hint=" ($(advice))"
            echo "error: $file: $url sent a bad file: $fail_reason$hint" >&2
            return 1
        fi
        if ((!retriable || attempt >= attempts)); then
            echo "error: $file: could not download $url: $fail_reason ($(advice))" >&2
            return 1
        fi
        attempt=$((attempt + 1))
        echo "note: $file: $fail_reason; attempt $attempt of $attempts in ${retry_delay}s" >&2
        sleep "$retry_delay"
    done
}

# --- unzipping ---------------------------------------------------------------------------------------
tmp_dir=""
trap '[[ -z "$tmp_dir" ]] || rm -rf "$tmp_dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

extract() {  # test, extract into a temporary folder, move the files into place, then remove the zip
    local zip="$data_dir/$file" dest="$data_dir" rel out missing=""
    [[ "$unzip_to" == . ]] || dest+="/$unzip_to"
    if ((!zip_tested)); then
        echo "testing $zip"
        if ! unzip -tq "$zip" >/dev/null 2>&1; then
            mv -f "$zip" "$zip.bad" || return 1
            echo "error: $file: corrupt zip (unzip -tq fails); moved to $zip.bad, the next run downloads it" \
                "afresh" >&2
            return 1
        fi
    fi
    echo "unzipping $zip into $dest"
    tmp_dir="$data_dir/.unzip-$file"
    rm -rf "$tmp_dir"
    mkdir -p "$tmp_dir" "$dest" || return 1
    if ! unzip -q -o "$zip" -d "$tmp_dir"; then
        echo "error: $file: unzip failed (full disk?); kept $zip" >&2
        return 1
    fi
    local -a outs
    local final=","
    IFS=',' read -r -a outs <<<"$outputs"
    for out in "${outs[@]}"; do
        rel="${out#"$unzip_to"/}"
        final+="$rel,"
        [[ -f "$tmp_dir/$rel" ]] || missing+=" $rel"
    done
    if [[ -n "$missing" ]]; then
        echo "error: $file: the zip lacks the expected file(s)$missing; kept $zip" >&2
        return 1
    fi
    # Final outputs are moved last, so their presence means the whole zip is in place.
    while IFS= read -r -d '' rel; do
        rel="${rel#./}"
        [[ "$final" == *",$rel,"* ]] && continue
        mkdir -p "$dest/$(dirname "$rel")" && mv -f "$tmp_dir/$rel" "$dest/$rel" || return 1
    done < <(cd "$tmp_dir" && find . -type f -print0)
    for out in "${outs[@]}"; do
        rel="${out#"$unzip_to"/}"
        mkdir -p "$(dirname "$dest/$rel")" && mv -f "$tmp_dir/$rel" "$dest/$rel" || return 1
    done
    rm -rf "$tmp_dir"
    tmp_dir=""
    rm -f "$zip"
}

# --- main loop ---------------------------------------------------------------------------------------
failed=()
done_count=0
skipped_count=0
for row in "${todo[@]}"; do
    load_item "$row"
    if is_complete; then
        skipped_count=$((skipped_count + 1))
        echo "skip $file: already in place"
        if [[ "$unzip_to" != "-" && -f "$data_dir/$file" ]]; then
            echo "note: removing $data_dir/$file: its contents are already in place"
            rm -f "$data_dir/$file"
        fi
        continue
    fi
    zip_tested=0
    if [[ "$unzip_to" == "-" && -f "$data_dir/$file" ]]; then  # in place but does not parse (is_complete)
        echo "note: $data_dir/$file is not valid JSON (${json_checked[$file]}); moved to" \
            "$data_dir/$file.bad, downloading it again" >&2
        mv -f "$data_dir/$file" "$data_dir/$file.bad"
        unset "json_checked[$file]"
    fi
    if [[ ! -f "$data_dir/$file" ]] && ! download; then
        failed+=("$file")
        continue
    fi
    if [[ "$unzip_to" != "-" ]] && ! extract; then
        failed+=("$file")
        continue
    fi
    done_count=$((done_count + 1))
done

echo "summary: $done_count fetched, $skipped_count already in place, ${#failed[@]} failed"
if ((${#failed[@]})); then
    echo "error: failed: ${failed[*]} (run $PROG again to retry; complete files are skipped)" >&2
    exit 1
fi
