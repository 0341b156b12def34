using System.Collections.Frozen;
using System.Globalization;
using System.Text.Json;
using Spectre.Console;

namespace Conveyor.Cli.Commands;

/// <summary><c>conveyor queues</c>: every error and skipped queue with its depth.</summary>
public sealed class QueuesCommand : ConveyorCommand<ApiSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, ApiSettings settings, CancellationToken cancellationToken)
    {
        var queues = Answers.ExpectArray(await client.GetAsync("api/error-queues", cancellationToken), "the error queues");
        if (settings.Json)
        {
            WriteJson(cli, queues);
            return ExitCodes.Ok;
        }

        var table = new Table().AddColumns("Queue", "Kind", "From queue", "Messages", "Consumers");
        foreach (var queue in queues.EnumerateArray())
        {
            table.AddRow(
                Output.Cell(queue, "name"), Output.Cell(queue, "kind"), Output.Cell(queue, "sourceQueue"),
                Output.Cell(queue, "messages"), Output.Cell(queue, "consumers"));
        }

        cli.Out.Write(table);
        if (queues.GetArrayLength() == 0)
        {
            // An empty frame alone reads as a listing that failed.
            cli.Err.WriteLine("No _error or _skipped queue on this vhost yet: the broker makes one when its first message is dead-lettered or skipped.");
        }

        return ExitCodes.Ok;
    }
}

/// <summary><c>conveyor messages &lt;queue&gt;</c>: the first messages with their faults; nothing is removed.</summary>
public sealed class MessagesCommand : ConveyorCommand<PeekSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, PeekSettings settings, CancellationToken cancellationToken)
    {
        var path = $"api/error-queues/{Escape(settings.Queue)}/messages";
        if (settings.Limit is { } limit)
        {
            path += $"?limit={limit.ToString(CultureInfo.InvariantCulture)}";
        }

        var result = Answers.ExpectObjectWithList(await client.GetAsync(path, cancellationToken, PeekSettings.Options.For), "an error queue's messages", "messages");
        if (settings.Json)
        {
            WriteJson(cli, result);
            return ExitCodes.Ok;
        }

        var messages = result.GetProperty("messages");
        // The name as given, which may have been copied from the Api's list with its control characters.
        cli.Out.Write(new Text(Printable.Text(settings.Queue), Output.Bold));
        cli.Out.WriteLine($": {Output.Plain(result, "queueDepth")} message(s); showing {messages.GetArrayLength()}.");
        Output.StoppedEarly(cli, result);
        var table = new Table().AddColumns("#", "Message id", "Type", "Job", "Job status", "Exception", "Message", "Failed at", "Attempts", "Group");
        var index = 0;
        foreach (var message in messages.EnumerateArray())
        {
            table.AddRow(
                new Text((++index).ToString(CultureInfo.InvariantCulture)), Output.Cell(message, "messageId"), Output.ShortType(message, "messageType"),
                Output.Cell(message, "jobId"), Output.Cell(message, "jobStatus"), Output.ShortType(message, "exceptionType"), Output.Cell(message, "exceptionMessage", 80),
                Output.Cell(message, "faultedAt"), Output.Cell(message, "attempts"), Output.Cell(message, "groupId"));
        }

        cli.Out.Write(table);
        if (settings.Body)
        {
            index = 0;
            foreach (var message in messages.EnumerateArray())
            {
                // A rule's title is markup: the id goes on a line of its own, as text.
                cli.Out.Write(new Rule());
                cli.Out.WriteLine($"#{++index} {Output.Plain(message, "messageId")}");
                cli.Out.WriteLine(Output.Lines(message, "stackTrace") ?? "(no stack trace)");
                cli.Out.WriteLine(Output.Lines(message, "bodyPreview") ?? "");
            }
        }

        return ExitCodes.Ok;
    }
}

/// <summary><c>conveyor groups &lt;queue&gt;</c>: messages grouped by fault fingerprint.</summary>
public sealed class GroupsCommand : ConveyorCommand<PeekSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, PeekSettings settings, CancellationToken cancellationToken)
    {
        var path = $"api/error-queues/{Escape(settings.Queue)}/groups";
        if (settings.Limit is { } limit)
        {
            path += $"?limit={limit.ToString(CultureInfo.InvariantCulture)}";
        }

        var result = Answers.ExpectObjectWithList(await client.GetAsync(path, cancellationToken, PeekSettings.Options.For), "an error queue's groups", "groups");
        if (settings.Json)
        {
            WriteJson(cli, result);
            return ExitCodes.Ok;
        }

        // The command to paste, for the largest group (the Api lists them by count): with this queue and that group,
        // quoted for a shell where they need it. Made before anything is printed: a group id no command line can carry
        // (a NUL) is an answer no Conveyor Api gives, which ends with 6 and nothing on stdout.
        var groups = result.GetProperty("groups");
        var largest = groups.EnumerateArray().Select(g => ConveyorClient.Text(g, "groupId")).FirstOrDefault();
        var moveLargest = string.IsNullOrEmpty(largest)
            ? null
            : $"Move the largest group back with: {cli.Command($"move {ShellWords.Queue(settings.Queue)} {ShellWords.Option("--group", largest)}")}";

        // The name as given, which may have been copied from the Api's list with its control characters.
        cli.Out.Write(new Text(Printable.Text(settings.Queue), Output.Bold));
        cli.Out.WriteLine($": {Output.Plain(result, "examined")} of {Output.Plain(result, "queueDepth")} message(s) examined.");
        Output.StoppedEarly(cli, result);
        var table = new Table().AddColumns("Group", "Count", "Exception", "Message", "First", "Last");
        foreach (var group in groups.EnumerateArray())
        {
            table.AddRow(
                Output.Cell(group, "groupId"), Output.Cell(group, "count"), Output.ShortType(group, "exceptionType"),
                Output.Cell(group, "normalisedMessage", 80), Output.Cell(group, "firstSeen"), Output.Cell(group, "lastSeen"));
        }

        cli.Out.Write(table);
        if (result.TryGetProperty("ungrouped", out var ungrouped) && ungrouped.ValueKind == JsonValueKind.Number && ungrouped.GetInt64() > 0)
        {
            cli.Out.WriteLine($"{ungrouped.GetInt64().ToString(CultureInfo.InvariantCulture)} more message(s) did not fit in the groups shown (at most 1,000 groups).");
        }

        if (moveLargest is not null)
        {
            // Shown with its control characters made visible.
            cli.Out.WriteLine(Printable.Text(moveLargest));
        }

        return ExitCodes.Ok;
    }
}

internal static class Output
{
    /// <summary>
    /// A field as a table cell: plain text, never read as markup, so brackets stay as they are and Spectre, which
    /// turns <c>:name:</c> in markup into an emoji, leaves <c>:warning:</c> in a queue name or exception message alone.
    /// </summary>
    public static Text Cell(JsonElement json, string name, int maxLength = 200) => new(Plain(json, name, maxLength));

    /// <summary>An inspection whose walk ended before it saw what it set out to (<c>stoppedEarly</c>): says so, and why.</summary>
    public static void StoppedEarly(CliContext cli, JsonElement result)
    {
        if (result.TryGetProperty("stoppedEarly", out var reason) && reason.ValueKind == JsonValueKind.String)
        {
            cli.Out.WriteLine($"Only part of the queue was seen: {Plain(result, "stoppedEarly")}");
        }
    }

    /// <summary>The fields of the Api's answers that hold a time, shown by <see cref="IsoTime.Display"/>.</summary>
    private static readonly FrozenSet<string> TimeFields = FrozenSet.Create(
        StringComparer.Ordinal, "faultedAt", "firstSeen", "lastSeen", "createdAt", "updatedAt", "finishedAt", "nextAttemptAt",
        "chargedAt", "deliveredAt", "completedAt");

    /// <summary>A field as one line of printable text, cut to <paramref name="maxLength"/>; a time in UTC at a fixed width.</summary>
    public static string Plain(JsonElement json, string name, int maxLength = 200)
    {
        if (json.ValueKind != JsonValueKind.Object || !json.TryGetProperty(name, out var value))
        {
            return "";
        }

        var text = value.ValueKind switch
        {
            JsonValueKind.String when TimeFields.Contains(name) => value.GetString() is { } time ? IsoTime.Display(time) ?? time : "",
            JsonValueKind.String => value.GetString() ?? "",
            JsonValueKind.Null or JsonValueKind.Undefined => "",
            _ => value.GetRawText(),
        };
        text = Printable.Text(text.ReplaceLineEndings(" "));
        if (text.Length <= maxLength)
        {
            return text;
        }

        // Never between the halves of a surrogate pair (an emoji): the first half alone would reach the terminal
        // as a lone surrogate, which Printable.Text escapes everywhere else. Printable text holds only whole pairs.
        var end = maxLength - 1;
        if (char.IsHighSurrogate(text[end - 1]))
        {
            end--;
        }

        return text[..end] + "…";
    }

    public static readonly Style Bold = new(decoration: Decoration.Bold);

    /// <summary>A text shown on lines of its own (a stack trace, a body), as plain text rather than markup.</summary>
    public static string? Lines(JsonElement json, string name) =>
        ConveyorClient.Text(json, name) is { } text ? Printable.Text(text, keepLineBreaks: true) : null;

    /// <summary>A type name without its namespace, to keep tables narrow.</summary>
    public static Text ShortType(JsonElement json, string name)
    {
        var full = ConveyorClient.Text(json, name);
        return new(full is null ? "" : Printable.Text(full[(full.LastIndexOf('.') + 1)..]));
    }
}
