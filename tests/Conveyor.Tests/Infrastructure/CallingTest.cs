using System.Diagnostics;
using System.Reflection;
using System.Runtime.CompilerServices;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// The test on the current call stack, to name what it starts: its hosts' broker connections carry
/// the name, so a connection a test leaves open says whose it is.
/// </summary>
public static class CallingTest
{
    private const int MaxLength = 150;

    /// <summary>"Class.Method" of the test method on the stack; else of the outermost test-class method on it; else "unknown test".</summary>
    public static string Name()
    {
        string? outermost = null;
        foreach (var (type, name) in TestNamespaceFrames())
        {
            var candidate = Bound($"{type.Name}.{name}");
            if (type.GetMethods(BindingFlags.Public | BindingFlags.Instance).Any(m => m.Name == name && m.IsDefined(typeof(FactAttribute))))
            {
                return candidate;
            }

            outermost = candidate;
        }

        return outermost ?? "unknown test";
    }

    /// <summary>The innermost test class on the stack (one with tests or a collection), also when a helper type nested in it is what runs; null if none is.</summary>
    public static Type? Class()
    {
        foreach (var (type, _) in TestNamespaceFrames())
        {
            for (Type? candidate = type; candidate is not null; candidate = candidate.DeclaringType)
            {
                if (IsTestClass(candidate))
                {
                    return candidate;
                }
            }
        }

        return null;
    }

    /// <summary>
    /// The command-line argument that names a host's broker connections after the calling test, unless
    /// <paramref name="settings"/> name them already; for the hosts started in this process and as processes.
    /// </summary>
    public static IEnumerable<string> InstanceNameArgument(IReadOnlyDictionary<string, string?> settings) =>
        settings.ContainsKey(InstanceNameSetting) ? [] : [$"--{InstanceNameSetting}={Name()}"];

    /// <summary>
    /// The methods on the stack, innermost first, declared in a test namespace (not this one): their
    /// type and name, with an async method's or a lambda's compiler-made type and name undone.
    /// </summary>
    private static IEnumerable<(Type Type, string Name)> TestNamespaceFrames()
    {
        foreach (var frame in new StackTrace().GetFrames())
        {
            if (frame.GetMethod() is not { DeclaringType: { } type } method)
            {
                continue;
            }

            var name = method.Name;
            // An async method or a lambda runs in a compiler-made type nested in its class:
            // <Method>d__3.MoveNext, or <>c__DisplayClass3_0.<Method>b__0.
            while (type.IsDefined(typeof(CompilerGeneratedAttribute)) && type.DeclaringType is { } outer)
            {
                if (type.Name.StartsWith('<') && type.Name.IndexOf('>', StringComparison.Ordinal) is > 1 and var end)
                {
                    name = type.Name[1..end];
                }

                type = outer;
            }

            if (name.StartsWith('<') && name.IndexOf('>', StringComparison.Ordinal) is > 1 and var close)
            {
                name = name[1..close];
            }

            if (type.Namespace is not { } space || !space.StartsWith("Conveyor.Tests.", StringComparison.Ordinal)
                || space == typeof(CallingTest).Namespace)
            {
                continue;
            }

            yield return (type, name);
        }
    }

    private static bool IsTestClass(Type type) =>
        type.IsDefined(typeof(CollectionAttribute))
        || type.GetMethods(BindingFlags.Public | BindingFlags.Instance).Any(method => method.IsDefined(typeof(FactAttribute)));

    private const string InstanceNameSetting = "RabbitMq:InstanceName";

    private static string Bound(string name) => name.Length <= MaxLength ? name : name[..MaxLength];
}
