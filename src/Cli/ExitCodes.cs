namespace Conveyor.Cli;

/// <summary>What the <c>conveyor</c> command's exit code means (also in src/Cli/README.md).</summary>
public static class ExitCodes
{
    /// <summary>Done; for move and purge, the operation succeeded in full.</summary>
    public const int Ok = 0;

    /// <summary>
    /// The operation failed, was cancelled or interrupted, or the server answered 500 (not to a read of the progress of an
    /// operation being followed: <see cref="ProgressUnknown"/>); <c>job --wait</c>, <c>result --wait</c>: the job
    /// ended dead-lettered or cancelled. Also stdout that refused a write (a full disk, <c>&gt; /dev/full</c>; one line on
    /// stderr says why), as what it printed is cut short.
    /// </summary>
    public const int OperationFailed = 1;

    /// <summary>
    /// The command line or the request was wrong (unknown option, missing argument, 400, 413, 415, 422). Never a 429,
    /// which says "try later" (<see cref="Unreachable"/>).
    /// </summary>
    public const int Usage = 2;

    /// <summary>
    /// No API key or a malformed one (control or non-ASCII characters), an unknown key (401, or the 429 of an address locked
    /// out for sending too many: <see cref="ConveyorClient.Answer.IsKeyLockout"/>) or a key without the needed scope (403).
    /// Refused on a read of the progress of a move or purge already started (or shown by <c>operation --wait</c>), the
    /// message names the operation, which goes on, and how to follow it with a key that may read it.
    /// </summary>
    public const int Auth = 3;

    /// <summary>
    /// No such queue, operation or job (404), or a conflict (409): the queue busy with another operation, a job <c>cancel</c>,
    /// <c>run-now</c> or <c>result</c> cannot act on in its status. Never for an operation the
    /// command started or has shown: a 404 to a later read of its progress is <see cref="ProgressUnknown"/>.
    /// </summary>
    public const int NotFoundOrConflict = 4;

    /// <summary>
    /// Try later: the Api could not be reached or timed out, or a 502/503/504 (of it or of a gateway in front of it) or a
    /// 429 (a rate limit, not a key lockout) was still there after the CLI tried again: a read for up to two minutes, after
    /// each Retry-After (<c>jobs --follow</c>: for <c>--retry-for</c>, if given, else until it passes); <c>submit</c> <c>--retries</c> times, as its 409 "Submission in progress"; <c>run-now --kind</c> a 502 or 504 at once, as the Api may have acted on it. For move and purge: the
    /// request to start it never reached the Api (a refused connection, an unknown name) or was refused (503, 429), so
    /// nothing was started; one sent and then left unanswered, or answered by a gateway's 502 or 504, is <see cref="StartUnknown"/>.
    /// </summary>
    public const int Unreachable = 5;

    /// <summary>
    /// The answer is not one a Conveyor Api gives (a proxy's HTML page, another service at that URL,
    /// an Api of another version, an operation or a job other than the one asked for, an error other than 502/503/504 that is not a problem document,
    /// a redirect, which is never followed, or an answer larger than
    /// <see cref="ConveyorClient.MaxAnswerBytes"/>, or a value holding a NUL or an unpaired surrogate where a command to run
    /// would be printed, which no command line can pass on): nothing in it could be shown. Never for an answer that accepts the start
    /// of a move or purge but names no operation: <see cref="StartUnknown"/>.
    /// </summary>
    public const int UnexpectedAnswer = 6;

    /// <summary>
    /// The operation is still running: started with <c>--no-wait</c>, shown without <c>--wait</c>, or <c>--timeout</c> passed first. It
    /// goes on; follow it with <c>conveyor operation &lt;id&gt; --wait</c>. For <c>job --wait</c> and <c>result --wait</c>: the job had not ended when the wait did.
    /// </summary>
    public const int StillRunning = 7;

    /// <summary>
    /// The operation ended but did only part of its work: matched messages it could not move (such as a
    /// target queue that does not exist; they stayed in the error queue), or it stopped before examining
    /// every message.
    /// </summary>
    public const int EndedWithFailures = 8;

    /// <summary>
    /// A move or purge was started (its id is on stderr), but its progress could not be read before giving up: the Api
    /// stayed unreachable or answered 429/502/503/504 while the CLI tried again, or answered a read of it with anything
    /// else that says nothing of the operation: a 500, a 404 (once the operation was started or shown), an answer that is
    /// no operation (a proxy's HTML page, or counts that are not whole numbers); <c>operation --wait</c> too, and <c>operation &lt;id&gt;</c>
    /// with or without <c>--wait</c> for an answer that shows the operation (its id and a state) with counts that are not whole numbers. It may still be running or have ended:
    /// do not start it again; follow it with <c>conveyor operation &lt;id&gt; --wait</c>. (A key refused on such a read
    /// is <see cref="Auth"/>, with the same words.)
    /// </summary>
    public const int ProgressUnknown = 9;

    /// <summary>
    /// The request to start a move or purge went out, but the Api's answer never came: the connection broke after it was
    /// sent, the Api did not answer in time, or a gateway in front of it answered 502 or 504 instead; or it was answered as
    /// accepted (2xx) with an answer that names no operation (no <c>operationId</c>, one that is not an id, a proxy's page),
    /// not <see cref="UnexpectedAnswer"/>, which a script would take for a start that did nothing. The Api may have started the operation, which would go on; the message says how to
    /// look (<c>conveyor operations --queue &lt;queue&gt; --state running</c>) before starting it again.
    /// </summary>
    public const int StartUnknown = 10;

    /// <summary>
    /// Ctrl+C (128 + SIGINT, as a shell reports a command it interrupted). A move or purge already started goes on: the
    /// message names it, to follow with <c>conveyor operation &lt;id&gt; --wait</c> (before the Api answered the request to start
    /// it, the message says that it may have started); <c>submit</c> lists the jobs the Api accepted
    /// before it and names the batch in flight; <c>jobs --follow</c>, which ends no other way when nothing fails and its stdout stays open (<see cref="OutputClosed"/>), says the command
    /// that resumes after the last job it printed. A second Ctrl+C ends the process at once.
    /// </summary>
    public const int Interrupted = 130;


    /// <summary>
    /// stdout was closed while the command had more to print: a pipe whose reader has gone (<c>conveyor jobs --follow | head -1</c>),
    /// 128 + SIGPIPE, as a shell reports a command a broken pipe ended. One line on stderr says so, no stack trace;
    /// <c>jobs --follow</c> notices it while it prints nothing too, and says the command that resumes where it stopped.
    /// A move or purge it waited for goes on.
    /// </summary>
    public const int OutputClosed = 141;
}
