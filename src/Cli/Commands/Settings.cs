using System.ComponentModel;
using System.Globalization;
using System.Text.RegularExpressions;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Conveyor.Cli.Commands;

public class ApiSettings : CommandSettings
{
    [CommandOption("--api <URL>")]
    [Description("The Conveyor Api, such as http://127.0.0.1:8080 (default: $CONVEYOR_API_URL). The key comes from $CONVEYOR_API_KEY.")]
    public string? Api { get; set; }

    [CommandOption("--json")]
    [Description("Print the Api's JSON instead of a table.")]
    public bool Json { get; set; }
}

/// <summary>
/// A command on one queue, named as its argument or, for a name beginning with <c>-</c>, as <c>--queue=NAME</c>: the CLI's
/// parser reads any word beginning with <c>-</c> as an option, and takes nothing after a <c>--</c> as an argument.
/// </summary>
public class QueueSettings : ApiSettings
{
    [CommandArgument(0, "[queue]")]
    [Description("An _error or _skipped queue, such as charge-payment_error (one whose name begins with '-': --queue=NAME).")]
    public string? QueueArgument { get; set; }

    [CommandOption("--queue <QUEUE>")]
    [Description("The queue, instead of the argument: for a name beginning with '-', given as --queue=-name.")]
    public string? QueueOption { get; set; }

    /// <summary>The queue, as the argument or <c>--queue</c> gave it.</summary>
    public string Queue => QueueOption ?? QueueArgument ?? "";

    public override ValidationResult Validate() =>
        (QueueArgument, QueueOption) switch
        {
            (null, null) => ValidationResult.Error("Name the queue: as the argument <queue>, or as --queue=NAME (for a name beginning with '-')."),
            ({ }, { }) => ValidationResult.Error("The queue is given twice, as the argument and as --queue: give it once."),
            // An unset variable ("$QUEUE"), as an empty option value is refused (CliApp.MissingValue): no queue has that name.
            ({ Length: 0 }, null) => ValidationResult.Error("The queue is empty: name the queue (an unset variable?). Nothing was sent."),
            _ => ValidationResult.Success(),
        };
}

public sealed class PeekSettings : QueueSettings
{
    [CommandOption("--limit <N>")]
    [Description("How many messages to show (messages: 20, at most 500) or examine (groups: 10000, at most 100000).")]
    public int? Limit { get; set; }

    [CommandOption("--body")]
    [Description("Also print each message's body preview and stack trace.")]
    public bool Body { get; set; }

    public override ValidationResult Validate() =>
        Limit is < 1 ? ValidationResult.Error("--limit must be at least 1.") : base.Validate();

    /// <summary>The query parameters of a queue's messages or groups, named in a 400's errors, as the options that give them.</summary>
    internal static readonly OptionNames Options = new(("limit", "--limit"));
}

public class FilterSettings : QueueSettings
{
    [CommandOption("--message-id <ID>")]
    [Description("Only this message (repeat for several).")]
    public string[]? MessageIds { get; set; }

    [CommandOption("--job-id <JOB_ID>")]
    [Description("Only the command of this job (repeat for several), such as a dead-lettered job found with 'conveyor jobs'.")]
    public Guid[]? JobIds { get; set; }

    [CommandOption("--exception-type <TYPE>")]
    [Description("Only messages that failed with this exception type (full or short name).")]
    public string? ExceptionType { get; set; }

    [CommandOption("--message-type <TYPE>")]
    [Description("Only messages of this contract (full or short name).")]
    public string? MessageType { get; set; }

    [CommandOption("--group <GROUP_ID>")]
    [Description("Only messages of this fault group (see 'conveyor groups').")]
    public string? GroupId { get; set; }

    [CommandOption("--faulted-before <TIME>")]
    [Description("Only messages that failed before this ISO 8601 time with an offset (Z or ±hh:mm).")]
    public string? FaultedBefore { get; set; }

    [CommandOption("--faulted-after <TIME>")]
    [Description("Only messages that failed at or after this ISO 8601 time with an offset (Z or ±hh:mm).")]
    public string? FaultedAfter { get; set; }

    [CommandOption("--limit <N>")]
    [Description("Act on at most this many matching messages.")]
    public int? Limit { get; set; }

    [CommandOption("--dry-run")]
    [Description("Change nothing; report what would be affected.")]
    public bool DryRun { get; set; }

    [CommandOption("--no-wait")]
    [Description("Print the operation id and return without waiting for the end (exit code 7: still running).")]
    public bool NoWait { get; set; }

    [CommandOption("--timeout <SECONDS>")]
    [Description("Stop waiting after this many seconds, at most 2592000 (30 days); the operation goes on (exit code 7 while it runs).")]
    public int? Timeout { get; set; }

    /// <summary>
    /// The longest <c>--timeout</c>: a read of the operation's progress is bounded by what is left of it, and a bound
    /// past about 49 days is more than a timer takes (the process ended with a stack trace once the move had started).
    /// </summary>
    public const int MaxTimeoutSeconds = 30 * 24 * 60 * 60;

    public override ValidationResult Validate()
    {
        if (Limit is < 1)
        {
            return ValidationResult.Error("--limit must be at least 1.");
        }

        if (Timeout is < 1 or > MaxTimeoutSeconds || (Timeout is not null && NoWait))
        {
            return ValidationResult.Error($"--timeout must be from 1 to {MaxTimeoutSeconds} seconds (30 days), and needs waiting (not --no-wait).");
        }

        var times = IsoTime.Check(("--faulted-before", FaultedBefore), ("--faulted-after", FaultedAfter));
        return times.Successful ? base.Validate() : times;
    }

    /// <summary>The fields of a move's or purge's body, named in a 400's errors, as the options that give them.</summary>
    internal static readonly OptionNames Options = new(
        ("filter.messageIds", "--message-id"), ("filter.jobIds", "--job-id"), ("filter.exceptionType", "--exception-type"),
        ("filter.messageType", "--message-type"), ("filter.groupId", "--group"), ("filter.faultedBefore", "--faulted-before"),
        ("filter.faultedAfter", "--faulted-after"), ("limit", "--limit"), ("dryRun", "--dry-run"), ("target", "--target"), ("confirm", "--confirm"));

    public Dictionary<string, object?> Filter()
    {
        var filter = new Dictionary<string, object?>(StringComparer.Ordinal);
        if (MessageIds is { Length: > 0 })
        {
            filter["messageIds"] = MessageIds;
        }

        if (JobIds is { Length: > 0 })
        {
            filter["jobIds"] = JobIds;
        }

        Add(filter, "exceptionType", ExceptionType);
        Add(filter, "messageType", MessageType);
        Add(filter, "groupId", GroupId);
        Add(filter, "faultedBefore", FaultedBefore);
        Add(filter, "faultedAfter", FaultedAfter);
        return filter;
    }

    private static void Add(Dictionary<string, object?> filter, string name, string? value)
    {
        if (value is not null)
        {
            filter[name] = value;
        }
    }
}

public sealed class MoveSettings : FilterSettings
{
    [CommandOption("--target <QUEUE>")]
    [Description("Move to this queue instead of each message's original queue.")]
    public string? Target { get; set; }
}

public sealed class PurgeSettings : FilterSettings
{
    [CommandOption("--confirm <QUEUE>")]
    [Description("The queue name again: a purge deletes messages for good (not needed with --dry-run).")]
    public string? Confirm { get; set; }
}

public sealed class OperationsSettings : ApiSettings
{
    [CommandOption("--queue <QUEUE>")]
    [Description("Only operations on this queue.")]
    public string? Queue { get; set; }

    [CommandOption("--state <STATE>")]
    [Description("Only operations in this state: running, succeeded, failed, cancelled, interrupted.")]
    public string? State { get; set; }

    [CommandOption("--limit <N>")]
    [Description("At most this many, newest first (default 50).")]
    public int? Limit { get; set; }

    [CommandOption("--before <OPERATION_ID>")]
    [Description("Only those listed after this one: the id of the last row of the previous page, for the next page.")]
    public Guid? Before { get; set; }

    /// <summary>The query parameters of <c>GET /api/operations</c>, named in a 400's errors, as the options that give them.</summary>
    internal static readonly OptionNames Options = new(("queue", "--queue"), ("state", "--state"), ("limit", "--limit"), ("before", "--before"));
}

public sealed class OperationSettings : ApiSettings
{
    [CommandArgument(0, "<id>")]
    [Description("The operation id that move or purge printed.")]
    public Guid Id { get; set; }

    [CommandOption("--wait")]
    [Description("Wait until it ends, showing progress.")]
    public bool Wait { get; set; }

    [CommandOption("--timeout <SECONDS>")]
    [Description("With --wait: stop waiting after this many seconds, at most 2592000 (30 days); the operation goes on (exit code 7 while it runs).")]
    public int? Timeout { get; set; }

    public override ValidationResult Validate() =>
        Timeout is < 1 or > FilterSettings.MaxTimeoutSeconds || (Timeout is not null && !Wait)
            ? ValidationResult.Error($"--timeout must be from 1 to {FilterSettings.MaxTimeoutSeconds} seconds (30 days), and needs --wait.")
            : ValidationResult.Success();
}

public sealed class AuditSettings : ApiSettings
{
    [CommandOption("--queue <QUEUE>")]
    [Description("Only entries for this queue.")]
    public string? Queue { get; set; }

    [CommandOption("--who <KEY_NAME>")]
    [Description("Only entries by this API key name.")]
    public string? Who { get; set; }

    [CommandOption("--since <TIME>")]
    [Description("Only entries since this ISO 8601 time with an offset, such as 2026-11-28T06:00:00Z.")]
    public string? Since { get; set; }

    [CommandOption("--limit <N>")]
    [Description("At most this many, newest first (default 50).")]
    public int? Limit { get; set; }

    [CommandOption("--before <OPERATION_ID>")]
    [Description("Only those listed after this one: the id of the last row of the previous page, for the next page.")]
    public Guid? Before { get; set; }

    public override ValidationResult Validate() => IsoTime.Check(("--since", Since));

    /// <summary>The query parameters of <c>GET /api/audit</c>, named in a 400's errors, as the options that give them (<c>requestedBy</c>: <c>--who</c>).</summary>
    internal static readonly OptionNames Options = new(
        ("queue", "--queue"), ("requestedBy", "--who"), ("since", "--since"), ("limit", "--limit"), ("before", "--before"));
}

/// <summary>
/// The options that give the Api's fields, so that a 400's errors name what the user typed (<c>--after</c>), not the
/// Api's field (<c>cursor</c>): the <c>describeField</c> of <see cref="ConveyorClient.GetAsync"/> and <see cref="ConveyorClient.PostAsync"/>.
/// A field no option gives is named as the Api names it.
/// </summary>
internal sealed class OptionNames(params (string Field, string Option)[] options)
{
    private readonly Dictionary<string, string> _optionsByField = options.ToDictionary(o => o.Field, o => o.Option, StringComparer.Ordinal);

    public string For(string field) => _optionsByField.GetValueOrDefault(field, field);
}

/// <summary>
/// The times the Api takes (its <c>IsoTimes</c>): an ISO 8601 date and time with an explicit offset, checked before
/// anything is sent. Without an offset ISO 8601 means local time, which the Api, in another zone, could only guess.
/// A copy of the Api's shape, not a reference to it: the Api's project would bring the server into the CLI, and the one
/// project without dependencies, Conveyor.Contracts, is the package of message contracts that producers install, where
/// the time format of the Api's filters does not belong. IsoTimesTests holds both to the same samples.
/// </summary>
internal static partial class IsoTime
{
    public static ValidationResult Check(params (string Option, string? Value)[] times)
    {
        foreach (var (option, value) in times)
        {
            if (value is not null && !(Shape().IsMatch(value) && DateTimeOffset.TryParse(value, CultureInfo.InvariantCulture, DateTimeStyles.None, out _)))
            {
                return ValidationResult.Error(
                    $"{option} must be an ISO 8601 date and time with an offset (Z or ±hh:mm), such as 2026-11-28T06:00:00Z or 2026-11-28T07:00:00+01:00; "
                    + $"'{Printable.Text(value)}' is not.");
            }
        }

        return ValidationResult.Success();
    }

    /// <summary>
    /// A time from the Api as the CLI's tables and views show it: in UTC, with all seven fraction digits, so a column of
    /// times lines up (the Api's JSON drops trailing zeros and may carry an offset) and each stays exact, fit to copy into
    /// <c>--faulted-before</c> or <c>--faulted-after</c>. Null for text of any other shape, which is then shown as it is.
    /// </summary>
    public static string? Display(string text) =>
        Shape().IsMatch(text) && DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.None, out var time)
            ? time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", CultureInfo.InvariantCulture)
            : null;

    [GeneratedRegex(@"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,7})?)?(Z|[+-][0-9]{2}:[0-9]{2})\z", RegexOptions.CultureInvariant, matchTimeoutMilliseconds: 1000)]
    private static partial Regex Shape();
}
