using System.ComponentModel;
using System.Reflection;
using Conveyor.Cli.Commands;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Conveyor.Cli;

/// <summary>
/// The <c>conveyor</c> command. <see cref="RunAsync"/> is what <c>Program.cs</c> calls and what tests
/// call in-process, with their own writers, HTTP handler and environment.
/// </summary>
public static class CliApp
{
    /// <summary>
    /// The command in this process's console. The first Ctrl+C cancels the command instead of killing the process, so
    /// that it ends as it should: a progress bar gives the cursor back, and a move or purge being waited for is named,
    /// as it goes on in the Api. A second Ctrl+C, should the first not end it, kills the process as usual.
    /// </summary>
    public static async Task<int> RunInConsoleAsync(string[] args)
    {
        using var interrupted = new CancellationTokenSource();
        void OnCancelKeyPress(object? sender, ConsoleCancelEventArgs press)
        {
            if (!interrupted.IsCancellationRequested)
            {
                press.Cancel = true;
                interrupted.Cancel();
            }
        }

        Console.CancelKeyPress += OnCancelKeyPress;
        using var output = StandardOutput.Open();
        try
        {
            return await RunCoreAsync(args, output.Writer, ErrorOutput, handler: null, environment: null, output, interrupted.Token);
        }
        finally
        {
            Console.CancelKeyPress -= OnCancelKeyPress;
        }
    }

    /// <summary>
    /// The process's stderr, which drops what it cannot write: started with it closed (<c>2&gt;&amp;-</c>: EBADF, which .NET
    /// throws as an UnauthorizedAccessException) or on a full disk, the command's words have nowhere to go, and its exit code
    /// is all that is left to say how it ended (the write's exception went unhandled, and the runtime aborted: 134).
    /// </summary>
    private static readonly TextWriter ErrorOutput = TextWriter.Synchronized(
        new GuardedWriter(Console.Error, exception => exception is IOException or UnauthorizedAccessException));

    /// <summary>The CLI's version as built (its informational version: the package version, and the commit when known).</summary>
    public static string Version { get; } =
        typeof(CliApp).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";

    public static Task<int> RunAsync(
        string[] args,
        TextWriter stdout,
        TextWriter stderr,
        HttpMessageHandler? handler = null,
        IReadOnlyDictionary<string, string?>? environment = null,
        CancellationToken cancellationToken = default) =>
        RunCoreAsync(args, stdout, stderr, handler, environment, standardOutput: null, cancellationToken);

    /// <param name="standardOutput">The process's stdout, when <paramref name="stdout"/> is its writer: asked whether it was closed.</param>
    private static async Task<int> RunCoreAsync(
        string[] args,
        TextWriter stdout,
        TextWriter stderr,
        HttpMessageHandler? handler,
        IReadOnlyDictionary<string, string?>? environment,
        StandardOutput? standardOutput,
        CancellationToken cancellationToken)
    {
        var consoleOut = ReferenceEquals(stdout, Console.Out) || ReferenceEquals(stdout, standardOutput?.Writer);
        var output = ConsoleFor(stdout, consoleOut && !Console.IsOutputRedirected);
        var errors = ConsoleFor(stderr, (ReferenceEquals(stderr, Console.Error) || ReferenceEquals(stderr, ErrorOutput)) && !Console.IsErrorRedirected);
        Func<bool> outputClosed = standardOutput is null ? () => false : standardOutput.IsClosed;
        var cli = new CliContext(output, errors, stdout, handler,
            name => environment is null ? Environment.GetEnvironmentVariable(name) : environment.GetValueOrDefault(name))
        {
            OutputClosed = outputClosed,
        };

        // Each command's settings type, by its name: which of its options take a value (MissingValue).
        var commands = new Dictionary<string, Type>(StringComparer.Ordinal);
        ICommandConfigurator Add<TCommand>(IConfigurator config, string name)
            where TCommand : class, ICommand
        {
            commands[name] = typeof(TCommand);
            return config.AddCommand<TCommand>(name).WithData(cli);
        }

        var app = new CommandApp();
        app.Configure(config =>
        {
            config.SetApplicationName("conveyor");
            // -v and --version: the version a bug report or a support question needs.
            config.SetApplicationVersion(Version);
            config.ConfigureConsole(output);
            config.PropagateExceptions();
            // An unknown or misspelt option is a usage error, never dropped: `purge --mesage-id x` would
            // otherwise purge the whole queue, and `move --dryrun` would really move.
            config.UseStrictParsing();
            Add<QueuesCommand>(config, "queues")
                .WithDescription("List every _error and _skipped queue with its depth.");
            Add<MessagesCommand>(config, "messages")
                .WithDescription("Show the first messages of an error queue and their faults (nothing is removed).")
                .WithExample("messages", "charge-payment_error", "--limit", "50");
            Add<GroupsCommand>(config, "groups")
                .WithDescription("Group an error queue's messages by fault (exception type and normalised message).");
            Add<MoveCommand>(config, "move")
                .WithDescription("Move matching messages back to their original queue (or --target), loss-free.")
                .WithExample("move", "charge-payment_error", "--group", "3f9a0c41d2e7", "--dry-run");
            Add<PurgeCommand>(config, "purge")
                .WithDescription("Delete matching messages for good; --confirm must repeat the queue name.")
                .WithExample("purge", "charge-payment_error", "--exception-type", "JsonException", "--confirm", "charge-payment_error");
            Add<OperationsCommand>(config, "operations")
                .WithDescription("List recent moves and purges.");
            Add<OperationCommand>(config, "operation")
                .WithDescription("Show one move or purge; --wait follows it to the end.");
            Add<AuditCommand>(config, "audit")
                .WithDescription("Who moved or purged what, when, from where to where.");
            Add<JobCommand>(config, "job")
                .WithDescription("Show one job: status, attempts, last error; --wait N waits up to N seconds for it to end.")
                .WithExample("job", "01a226c0-8294-79a4-ab6e-acec986f8a3d", "--wait", "300");
            Add<ResultCommand>(config, "result")
                .WithDescription("Show what a succeeded job did: a charge's gateway charge id, a webhook's answer, a report's totals; --wait N waits up to N seconds for it.")
                .WithExample("result", "01a226c0-8294-79a4-ab6e-acec986f8a3d", "--wait", "600");
            Add<CancelCommand>(config, "cancel")
                .WithDescription("Cancel a job that has not started (queued or scheduled); one that has is a conflict (exit 4).")
                .WithExample("cancel", "01a226c0-8294-79a4-ab6e-acec986f8a3d");
            Add<RunNowCommand>(config, "run-now")
                .WithDescription("Run a scheduled or retry-scheduled job now instead of at its time, or with --kind every such job of a kind (after an outage); each keeps its retry budget.")
                .WithExample("run-now", "01a226c0-8294-79a4-ab6e-acec986f8a3d")
                .WithExample("run-now", "--kind", "charge-payment");
            Add<JobsCommand>(config, "jobs")
                .WithDescription("List jobs, newest first, or oldest first up to the settle horizon (--order oldest); --follow keeps polling oldest first; --kind with --business-key finds the job of a paymentId, webhookId or reportId.")
                .WithExample("jobs", "--kind", "charge-payment", "--business-key", "0b6f3f3e-5d55-4b43-9d6c-6f1f8c7e2a10")
                .WithExample("jobs", "--kind", "charge-payment", "--follow");
            Add<SubmitCommand>(config, "submit")
                .WithDescription("Submit the jobs of a file or standard input (JSON lines or a JSON array) in batches; running it again submits nothing twice.")
                .WithExample("submit", "charge-payment", "charges.jsonl", "--batch-size", "50");
        });

        try
        {
            if (args.Length == 0)
            {
                await app.RunAsync(["--help"], cancellationToken);
                return ExitCodes.Usage;
            }

            if ((EndOfOptions(args) ?? MissingValue(args, commands) ?? SwitchGivenAWord(args, commands) ?? GivenTwice(args, commands)) is { } missing)
            {
                await stderr.WriteLineAsync($"conveyor: {missing}");
                await stderr.WriteLineAsync("Run 'conveyor --help' for the commands and their options.");
                return ExitCodes.Usage;
            }

            return await app.RunAsync(args, cancellationToken);
        }
        catch (CliFailureException failure)
        {
            // A failure's message carries the Api's words (a problem's title, detail and errors).
            await stderr.WriteLineAsync($"conveyor: {Printable.Text(failure.Message, keepLineBreaks: true)}");
            return failure.ExitCode;
        }
        catch (CommandAppException exception)
        {
            var message = UnconvertibleValue(exception.Message, args, commands) ?? exception.Message;
            await stderr.WriteLineAsync($"conveyor: {Printable.Text(message, keepLineBreaks: true)}");
            if (DashedValue(args, commands) is { } dashed)
            {
                await stderr.WriteLineAsync($"conveyor: {Printable.Text(dashed)}");
            }

            await stderr.WriteLineAsync("Run 'conveyor --help' for the commands and their options.");
            return ExitCodes.Usage;
        }
        catch (IOException) when (outputClosed())
        {
            // stdout's reader has gone (`conveyor ... | head -1`): what was left to print has no one to read it. As a
            // shell reports a command a broken pipe ended, not with a stack trace; a move or purge it waited for goes on.
            await stderr.WriteLineAsync("conveyor: standard output was closed (broken pipe): stopped.");
            return ExitCodes.OutputClosed;
        }
        catch (IOException exception) when (standardOutput?.WriteFailed is true)
        {
            // stdout refused a write it could not take (a full disk, `> /dev/full`): what it printed is cut short, which a
            // script must not take for success. Said in one line, not as a stack trace and the runtime's abort (134).
            await stderr.WriteLineAsync($"conveyor: could not write standard output: {Printable.Text(exception.Message)}");
            return ExitCodes.OperationFailed;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Ctrl+C: no stack trace. A started move or purge has said which it is (a CliFailureException above).
            await stderr.WriteLineAsync("conveyor: interrupted.");
            return ExitCodes.Interrupted;
        }
        catch (Exception exception) when (IsUnexpectedShape(exception))
        {
            // The commands read the Api's JSON by its documented shape; anything else lands here.
            var unexpected = Answers.Unexpected(exception.Message);
            await stderr.WriteLineAsync($"conveyor: {Printable.Text(unexpected.Message, keepLineBreaks: true)}");
            return unexpected.ExitCode;
        }
    }

    /// <summary>
    /// Spectre's words for an option or argument value of the wrong kind name a .NET type ("Failed to convert 'x' to
    /// Nullable`1"): said instead with the option or argument the value was given to, as the command line has it.
    /// Null for any other message.
    /// </summary>
    internal static string? UnconvertibleValue(string message, IReadOnlyList<string> args, IReadOnlyDictionary<string, Type> commands)
    {
        const string Prefix = "Failed to convert '";
        var end = message.LastIndexOf("' to ", StringComparison.Ordinal);
        if (!message.StartsWith(Prefix, StringComparison.Ordinal) || end < Prefix.Length)
        {
            return null;
        }

        var value = message[Prefix.Length..end];
        var option = args.Count > 0 && commands.TryGetValue(args[0], out var command) ? NotConvertibleAt(value, args, command) : null;
        for (var i = 0; i < args.Count && option is null; i++)
        {
            if (args[i] == value && i > 0 && args[i - 1].StartsWith('-'))
            {
                option = args[i - 1];
            }
            else if (args[i].StartsWith("--", StringComparison.Ordinal) && args[i].EndsWith($"={value}", StringComparison.Ordinal))
            {
                option = args[i][..args[i].IndexOf('=', StringComparison.Ordinal)];
            }
        }

        return $"'{value}' is not a valid value for {option ?? "an option"} (a number out of range, or not the kind of value it takes: see --help).";
    }

    /// <summary>
    /// The option (<c>--wait</c>) or argument (<c>&lt;job-id&gt;</c>) of the line given <paramref name="value"/> that cannot
    /// take it. The same text may be given to several, and is wrong for one only: in <c>job 5 --wait 5</c> the job id is
    /// wrong, not the wait, which the first option before an equal text would have named. Null when none is found.
    /// </summary>
    private static string? NotConvertibleAt(string value, IReadOnlyList<string> args, Type command)
    {
        var options = Options(command)
            .SelectMany(option => option.Names.Select(name => (Name: name, PropertyType: option.Type, TakesValue: option.ValueName is not null)))
            .ToDictionary(o => o.Name, o => (o.PropertyType, o.TakesValue), StringComparer.Ordinal);
        var arguments = (SettingsOf(command)?.GetProperties() ?? [])
            .Select(property => (property.PropertyType, Argument: property.GetCustomAttributes(typeof(CommandArgumentAttribute), inherit: true).OfType<CommandArgumentAttribute>().FirstOrDefault()))
            .Where(p => p.Argument is not null)
            .OrderBy(p => p.Argument!.Position)
            .Select(p => (Name: $"<{p.Argument!.ValueName}>", p.PropertyType))
            .ToList();

        var position = 0;
        for (var i = 1; i < args.Count; i++)
        {
            (string Name, string Given, Type Type)? given = null;
            var equals = args[i].IndexOf('=', StringComparison.Ordinal);
            if (args[i].StartsWith("--", StringComparison.Ordinal) && equals > 0)
            {
                if (options.TryGetValue(args[i][..equals], out var option))
                {
                    given = (args[i][..equals], args[i][(equals + 1)..], option.PropertyType);
                }
            }
            else if (options.TryGetValue(args[i], out var option))
            {
                if (option.TakesValue && i + 1 < args.Count)
                {
                    given = (args[i], args[++i], option.PropertyType);
                }
            }
            else if (!args[i].StartsWith('-') && position < arguments.Count)
            {
                given = (arguments[position].Name, args[i], arguments[position].PropertyType);
                position++;
            }

            if (given is { } g && g.Given == value && !Converts(g.Given, g.Type))
            {
                return g.Name;
            }
        }

        return null;
    }

    /// <summary>Whether <paramref name="text"/> converts to <paramref name="type"/> (an array's element, a nullable's value) as Spectre converts it, by its type converter.</summary>
    private static bool Converts(string text, Type type)
    {
        var target = type.IsArray ? type.GetElementType()! : Nullable.GetUnderlyingType(type) ?? type;
        return TypeDescriptor.GetConverter(target).IsValid(text);
    }

    /// <summary>
    /// An option that takes a value given none: last on the line, or followed by another option.
    /// Spectre gives such an option a placeholder of its own ("__default_command"), which a command
    /// would then take for the value: <c>move q_error --target</c> would name a queue
    /// "__default_command". An empty value (<c>--limit "$N"</c> with N unset) is none too: Spectre reads
    /// it as no option at all for a number, an id or a time, so <c>purge q_error --limit "" --confirm q_error</c>
    /// would purge the whole queue, <c>job ID --wait ""</c> exit 0 for a dead-lettered job, and
    /// <c>move --timeout ""</c> wait without end. Null when every such option of the command has its value.
    /// </summary>
    internal static string? MissingValue(IReadOnlyList<string> args, IReadOnlyDictionary<string, Type> commands)
    {
        if (args.Count == 0 || !commands.TryGetValue(args[0], out var command))
        {
            return null;
        }

        var options = ValueOptions(command);
        for (var i = 1; i < args.Count; i++)
        {
            if (args[i] == "--")
            {
                return null;
            }

            if (options.TryGetValue(args[i], out var valueName)
                && (i + 1 == args.Count || args[i + 1].StartsWith("--", StringComparison.Ordinal)))
            {
                return $"{args[i]} needs a value ({valueName}).";
            }

            if (options.TryGetValue(args[i], out valueName) && args[i + 1].Length == 0)
            {
                return $"{args[i]} was given an empty value; it needs a value ({valueName}), or leave the option out.";
            }
        }

        return null;
    }

    /// <summary>
    /// How to give a value that begins with <c>-</c>, found on a line the parser refused: it reads such a word as options
    /// (<c>move -weird_error</c>: "Short option does not have a valid name"), and takes no argument after a <c>--</c>. An
    /// option's value is given as <c>--option=VALUE</c>, a queue as <c>--queue=NAME</c>. Null when no word of the line looks
    /// like such a value (a negative number is read as a value already).
    /// </summary>
    internal static string? DashedValue(IReadOnlyList<string> args, IReadOnlyDictionary<string, Type> commands)
    {
        if (args.Count == 0 || !commands.TryGetValue(args[0], out var command))
        {
            return null;
        }

        var options = Options(command);
        var known = options.SelectMany(option => option.Names).Append("-h").ToHashSet(StringComparer.Ordinal);
        var takesValue = ValueOptions(command);
        for (var i = 1; i < args.Count; i++)
        {
            var word = args[i];
            if (word.Length < 2 || word[0] != '-' || word[1] == '-' || char.IsAsciiDigit(word[1]) || known.Contains(word))
            {
                continue;
            }

            return takesValue.ContainsKey(args[i - 1])
                ? $"'{word}' begins with '-', which is read as an option: give it as {args[i - 1]}={ShellWords.Quote(word)}."
                : typeof(QueueSettings).IsAssignableFrom(SettingsOf(command))
                    ? $"'{word}' begins with '-', which is read as an option: give a queue named so as --queue={ShellWords.Quote(word)}."
                    : $"'{word}' begins with '-', which is read as an option: give a value beginning with '-' as --option=VALUE.";
        }

        return null;
    }

    /// <summary>
    /// A <c>--</c> on the line. Spectre reads everything after it as remaining arguments, which strict
    /// parsing lets through and no command reads: <c>purge q_error --confirm q_error -- --message-id x</c>
    /// would purge the whole queue, <c>move q_error -- --dry-run</c> really move. No command takes one.
    /// </summary>
    internal static string? EndOfOptions(IReadOnlyList<string> args) =>
        args.Skip(1).Contains("--", StringComparer.Ordinal)
            ? "'--' is not accepted: no command reads arguments after it, so the options that follow would be ignored. Remove it."
            : null;

    /// <summary>
    /// A switch (<c>--dry-run</c>, <c>--no-wait</c>, <c>--json</c>, ...: an option that takes no value) followed by the word
    /// <c>true</c> or <c>false</c>, in any case. Spectre reads that word as the switch's value, so <c>move q_error --dry-run
    /// false</c>, a line that says "dry run", would move every message. A switch is on when given and off when left out;
    /// its explicit form <c>--dry-run=false</c>, which cannot be misread, is taken as written. Any other word after a switch
    /// is an argument, as it always was (<c>move --dry-run q_error</c>), and a queue named <c>false</c> is given before the
    /// switch or as <c>--queue=false</c>. Null when no switch is followed by such a word.
    /// </summary>
    internal static string? SwitchGivenAWord(IReadOnlyList<string> args, IReadOnlyDictionary<string, Type> commands)
    {
        if (args.Count == 0 || !commands.TryGetValue(args[0], out var command))
        {
            return null;
        }

        var switches = Options(command).Where(option => option.ValueName is null).SelectMany(option => option.Names).ToHashSet(StringComparer.Ordinal);
        for (var i = 1; i + 1 < args.Count; i++)
        {
            if (switches.Contains(args[i])
                && (string.Equals(args[i + 1], "true", StringComparison.OrdinalIgnoreCase) || string.Equals(args[i + 1], "false", StringComparison.OrdinalIgnoreCase)))
            {
                return $"{args[i]} is a switch: it takes no value, and '{args[i + 1]}' after it is refused rather than read as one. "
                    + $"Give {args[i]} alone to turn it on, or leave it out; {args[i]}={args[i + 1].ToLowerInvariant()} says the same plainly. Nothing was sent.";
            }
        }

        return null;
    }

    /// <summary>
    /// An option given twice. Spectre keeps the last, so <c>--exception-type A --exception-type B</c> would act on B alone,
    /// and <c>--dry-run --dry-run=false</c> would move: a switch given twice is refused as well, whatever its forms say.
    /// Options that may be repeated (<c>--message-id</c>) are arrays.
    /// </summary>
    internal static string? GivenTwice(IReadOnlyList<string> args, IReadOnlyDictionary<string, Type> commands)
    {
        if (args.Count == 0 || !commands.TryGetValue(args[0], out var command))
        {
            return null;
        }

        var single = Options(command).Where(option => !option.Type.IsArray).ToList();
        foreach (var option in single)
        {
            var given = args.Skip(1).Count(arg => option.Names.Any(name =>
                arg == name || arg.StartsWith(name + "=", StringComparison.Ordinal) || arg.StartsWith(name + ":", StringComparison.Ordinal)));
            if (given > 1)
            {
                return option.ValueName is null
                    ? $"{option.Names[0]} is given {given} times; it is a switch: give it once."
                    : $"{option.Names[0]} is given {given} times; it takes one value ({option.ValueName}).";
            }
        }

        return null;
    }

    /// <summary>The options of a command that take a value, with the name of the value (--limit: N).</summary>
    private static Dictionary<string, string> ValueOptions(Type command) =>
        Options(command)
            .Where(option => option is { ValueName: not null, ValueIsOptional: false })
            .SelectMany(option => option.Names.Select(name => (Name: name, Value: option.ValueName!)))
            .ToDictionary(option => option.Name, option => option.Value, StringComparer.Ordinal);

    /// <summary>The options of a command's settings: their names as typed (--limit, -l), value name, and the type of their property (an array when they may be repeated).</summary>
    private static List<(string[] Names, string? ValueName, bool ValueIsOptional, Type Type)> Options(Type command)
    {
        return [.. (SettingsOf(command)?.GetProperties() ?? [])
            .Select(property => (Property: property, Option: property.GetCustomAttributes(typeof(CommandOptionAttribute), inherit: true).OfType<CommandOptionAttribute>().FirstOrDefault()))
            .Where(p => p.Option is not null)
            .Select(p => (
                Names: p.Option!.LongNames.Select(name => $"--{name}").Concat(p.Option.ShortNames.Select(name => $"-{name}")).ToArray(),
                p.Option.ValueName,
                p.Option.ValueIsOptional,
                p.Property.PropertyType))];
    }

    /// <summary>The settings type of a command (<c>JobSettings</c> for <c>JobCommand</c>), or null.</summary>
    private static Type? SettingsOf(Type command)
    {
        var type = command;
        while (type is not null && !(type.IsGenericType && type.GetGenericArguments() is [var argument] && typeof(CommandSettings).IsAssignableFrom(argument)))
        {
            type = type.BaseType;
        }

        return type?.GetGenericArguments()[0];
    }

    /// <summary>What reading a JSON answer of the wrong shape throws: a missing property, a value of another kind, an unparsable id or time.</summary>
    private static bool IsUnexpectedShape(Exception exception) =>
        exception is KeyNotFoundException or FormatException or System.Text.Json.JsonException
        || (exception is InvalidOperationException && exception.TargetSite?.DeclaringType?.Namespace?.StartsWith("System.Text.Json", StringComparison.Ordinal) == true);

    private static IAnsiConsole ConsoleFor(TextWriter writer, bool terminal)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (!terminal)
        {
            // Tables written to a file or pipe are not cut to 80 columns.
            console.Profile.Width = 240;
        }

        return console;
    }
}
